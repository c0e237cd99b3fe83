"""Who wrote a result file, from which code, and when.

Every JSON the CLI writes carries `tool_info()`: the distribution name and
version (package metadata, else pyproject.toml), the git revision of the
checkout when the code runs from one (``+dirty`` when it has uncommitted
changes; absent otherwise), and the UTC time the file was made.
"""

from __future__ import annotations

import datetime
import functools
import re
import subprocess
from pathlib import Path

__all__ = ["tool_version", "git_revision", "tool_info", "DIST_NAME"]

DIST_NAME = "vit-intsim"
_ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def tool_version() -> str:
    """The version of this checkout: pyproject.toml beside the code, else the installed metadata."""
    pyproject = _ROOT / "pyproject.toml"
    try:
        m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
        if m:
            return m.group(1)
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DIST_NAME)
    except PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """Short commit hash of the checkout the code runs from (``+dirty`` if modified), or None."""
    if not (_ROOT / ".git").exists():
        return None
    try:
        rev = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def tool_info() -> dict:
    """``{"name", "version", "git_revision"?, "created_utc"}`` for a result file's header."""
    info = {"name": DIST_NAME, "version": tool_version()}
    rev = git_revision()
    if rev:
        info["git_revision"] = rev
    info["created_utc"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return info
