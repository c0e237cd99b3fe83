"""Every file the tools write goes through here: atomic, umask-honouring, one-line errors.

Rules (issue 18, and issue 19 item 6 for the permissions):

* **Atomic, in the target folder only.** Bytes go to a hidden temp file
  (``.<name>.<random>.tmp``) in the target's own directory, which is then
  renamed onto the target (``os.replace``, atomic on POSIX within one file
  system). A directory (a vector set) is built as a hidden temp directory
  beside it and renamed. Nothing is written anywhere else, and on any failure
  the temp file or directory is removed, so a failed write leaves nothing.
* **The user's umask.** ``mkstemp``/``mkdtemp`` create 0600/0700 entries; we
  chmod them to ``0o666 & ~umask`` / ``0o777 & ~umask`` before the rename,
  the modes ``open()`` and ``mkdir`` would have given.
* **OS errors are input errors.** Read-only file system, permission denied,
  no space left, is a directory, ... become one `InputError` line naming the
  flag and path (``--json out/r.json: cannot write: no space left on device``).
* **JSON is strict.** `dumps_json` refuses NaN and infinities (JSON has
  neither; ``json.dumps`` would write the non-standard ``Infinity``) and names
  the field that holds one.

`Batch` stages several files and renames them only when all were written, so
a run with ``--save-qvit`` and ``--json`` writes both or neither.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from simulator.errors import InputError

__all__ = ["umask", "file_mode", "dir_mode", "os_reason", "check_writable", "write_bytes", "write_json",
           "dumps_json", "write_tree", "Batch", "ensure_dir"]

Writer = Callable[[IO[bytes]], None]

_REASONS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a parent is not a directory",
    errno.ENOENT: "no such directory",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EFBIG: "file too large",
}


def umask() -> int:
    """The process umask: from ``/proc/self/status`` where Linux has it (no side effect), else by
    setting and restoring it (a brief window in which another thread's new file gets 0o022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def os_reason(e: OSError) -> str:
    """A short lowercase reason for an OS error, never the contents of any file."""
    return _REASONS.get(e.errno, (e.strerror or type(e).__name__).lower())


def _label(label: str | None, path) -> str:
    return label if label is not None else os.fspath(path)


def _check_target(path: Path, label: str) -> Path:
    """The target's directory, after the checks that need no write."""
    if path.is_dir():
        raise InputError(f"{label}: is a directory, expected a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise InputError(f"{label}: directory {parent} {what}")
    return parent


def _stage(path: Path, write: Writer, label: str) -> str:
    """Write to a temp file beside ``path`` and give it the umask mode; returns the temp path."""
    parent = _check_target(path, label)
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"{label}: cannot write: {os_reason(e)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, file_mode())
    except OSError as e:
        _unlink(tmp)
        raise InputError(f"{label}: cannot write: {os_reason(e)}") from None
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _commit(tmp: str, path: Path, label: str) -> None:
    try:
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise InputError(f"{label}: cannot write: {os_reason(e)}") from None


def _as_writer(data: bytes | Writer) -> Writer:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return lambda f: f.write(data)
    return data


def check_writable(path: str | os.PathLike, label: str | None = None) -> None:
    """Fail early (before a long run) if ``path`` cannot be written: creates and removes a temp file."""
    path = Path(path)
    label = _label(label, path)
    _unlink(_stage(path, lambda f: None, label))


def write_bytes(path: str | os.PathLike, data: bytes | Writer, label: str | None = None) -> None:
    """Atomically write ``data`` (bytes, or a function writing into a binary file) to ``path``."""
    path = Path(path)
    label = _label(label, path)
    _commit(_stage(path, _as_writer(data), label), path, label)


def _first_non_finite(node, where: str = "") -> tuple[str, float] | None:
    if isinstance(node, float):
        return None if math.isfinite(node) else (where or "(top level)", node)
    if isinstance(node, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in node.items())
    elif isinstance(node, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(node))
    else:
        return None
    for w, v in items:
        hit = _first_non_finite(v, w)
        if hit is not None:
            return hit
    return None


def dumps_json(payload, label: str, indent: int | None = 2, default=None) -> bytes:
    """``json.dumps(..., allow_nan=False)``; a NaN or infinity is an `InputError` naming its field."""
    if default is not None:   # convert numpy leaves first, so the non-finite search sees plain floats
        payload = json.loads(json.dumps(payload, default=default))
    try:
        return (json.dumps(payload, indent=indent, allow_nan=False) + "\n").encode("utf-8")
    except ValueError:
        hit = _first_non_finite(payload)
        where, value = hit if hit is not None else ("?", float("nan"))
        raise InputError(f"{label}: {where} is {value}, which JSON cannot hold (only finite numbers are "
                         f"written); check the inputs that produced it") from None


def write_json(path: str | os.PathLike, payload, label: str | None = None, indent: int | None = 2,
               default=None) -> None:
    """Strict JSON (see `dumps_json`), written atomically."""
    label = _label(label, path)
    write_bytes(path, dumps_json(payload, label, indent, default), label)


def ensure_dir(path: str | os.PathLike, label: str | None = None) -> Path:
    """``mkdir -p`` with one-line errors (a file in the way, read-only parent, ...)."""
    path = Path(path)
    label = _label(label, path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{label}: {path} is a file, expected a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{label}: a component of {path} is a file, expected a directory") from None
    except OSError as e:
        raise InputError(f"{label}: cannot create directory {path}: {os_reason(e)}") from None
    return path


def write_tree(out: str | os.PathLike, files: dict[str, bytes], label: str | None = None) -> None:
    """Create directory ``out`` (must not exist) holding ``files`` ({relative path: bytes}), atomically.

    Built as a hidden temp directory beside ``out`` and renamed onto it.
    """
    out = Path(out)
    label = _label(label, out)
    if out.exists() or out.is_symlink():
        raise InputError(f"{label}: already exists; choose a new directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{label}: directory {parent} does not exist")
    try:
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"{label}: cannot write: {os_reason(e)}") from None
    try:
        fmode, dmode = file_mode(), dir_mode()
        for rel, data in files.items():
            target = Path(tmp, rel)
            for d in reversed(target.relative_to(tmp).parents[:-1]):
                if not (Path(tmp) / d).is_dir():
                    os.mkdir(Path(tmp) / d)
                    os.chmod(Path(tmp) / d, dmode)
            with open(target, "wb") as f:
                f.write(data)
            os.chmod(target, fmode)
        os.chmod(tmp, dmode)
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{label}: cannot write: {os_reason(e)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Batch:
    """Stage several files, then rename all of them; on any failure none is left behind.

    ::

        with Batch() as b:
            b.add("q.npz", writer, "--save-qvit q.npz")
            b.add("r.json", data, "--json r.json")
        # both renamed here, or (an exception inside) both temp files removed
    """

    def __init__(self):
        self._staged: list[tuple[str, Path, str]] = []

    def add(self, path: str | os.PathLike, data: bytes | Writer, label: str | None = None) -> None:
        path = Path(path)
        label = _label(label, path)
        self._staged.append((_stage(path, _as_writer(data), label), path, label))

    def __enter__(self) -> "Batch":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for tmp, _, _ in self._staged:
                _unlink(tmp)
            return
        for i, (tmp, path, label) in enumerate(self._staged):
            try:
                _commit(tmp, path, label)
            except InputError:
                for later, _, _ in self._staged[i + 1:]:
                    _unlink(later)
                raise
