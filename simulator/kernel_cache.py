"""Where compiled kernels are cached (numba-free, so a process can decide before importing numba).

`simulator.jit` compiles with ``cache=True`` into
`cache_dir`: ``NUMBA_CACHE_DIR`` if set, else `user_cache_dir`
(``$XDG_CACHE_HOME/vit-intsim/numba``, ``~/.cache/vit-intsim/numba``) -- a user
directory, so the cache works when the package sits in a read-only
site-packages, and one place to delete for a cold start. (Numba itself falls
back to the source tree's ``__pycache__`` if that directory is not writable.)

The warm start that fills it in a helper process: `simulator.warm_start`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

__all__ = ["user_cache_dir", "cache_dir", "stamp_path"]

_SOURCES = Path(__file__).resolve().parent


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vit-intsim/numba`` (default ``~/.cache/vit-intsim/numba``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vit-intsim" / "numba"


def cache_dir() -> Path:
    """Where the kernels are cached: ``NUMBA_CACHE_DIR`` if set, else `user_cache_dir` (numba-free)."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    return Path(env) if env else user_cache_dir()


def stamp_path() -> Path:
    """The file that says the kernels of this code were warmed into the cache: named by a hash of the
    kernel sources (path, size, mtime), the numba version and the Python version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        numba_version = version("numba")
    except PackageNotFoundError:
        numba_version = "?"
    h = hashlib.sha256(f"{sys.version}|{numba_version}".encode())
    for p in sorted([*_SOURCES.glob("*.py"), *(_SOURCES / "kernels").glob("*.py")]):
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return cache_dir() / f"vit-intsim-warm-{h.hexdigest()[:20]}"
