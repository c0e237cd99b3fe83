"""Deterministic ``.npz`` files, read back without trusting their zip structure.

`np.savez` stamps each member with the current time, so two saves of the same
arrays differ. Here every member is a stored (uncompressed) ``.npy`` payload
with a fixed 1980-01-01 timestamp, so a file's bytes are a pure function of its
arrays; `np.load` reads it like any other ``.npz``. The manifest records, per
member, where its payload starts, its length and its SHA-256, which lets the
verifier (a) read a payload even when the zip headers or CRCs are damaged and
(b) rebuild the exact expected file from verified payloads and point at the
first differing byte (`describe_offset` names the zip region).
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile

import numpy as np

__all__ = ["npy_payload", "npz_bytes", "member_table", "read_payload", "payload_array",
           "describe_offset", "first_difference"]

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_LOCAL_HEADER = 30        # fixed part of a zip local file header
_CENTRAL_ENTRY = 46       # fixed part of a central directory entry


def npy_payload(arr: np.ndarray) -> bytes:
    """The ``.npy`` bytes of ``arr`` (format 1.0, no pickles)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr).copy(order="C"), allow_pickle=False)   # keeps 0-d
    return buf.getvalue()


def npz_bytes(payloads: dict[str, bytes]) -> bytes:
    """A zip of ``<name>.npy`` members in the given order, stored, fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, payload in payloads.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, payload)
    return buf.getvalue()


def member_table(data: bytes) -> list[list]:
    """``[[name, payload_offset, payload_bytes, sha256], ...]`` of a file made by `npz_bytes`."""
    table = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            n_name, n_extra = struct.unpack_from("<HH", data, info.header_offset + 26)
            start = info.header_offset + _LOCAL_HEADER + n_name + n_extra
            payload = data[start:start + info.file_size]
            table.append([info.filename[:-4], start, info.file_size, hashlib.sha256(payload).hexdigest()])
    return table


def read_payload(data: bytes, entry: list) -> bytes:
    """A member's payload at the offset the manifest recorded (zip headers not consulted)."""
    _, start, size, _ = entry
    return data[start:start + size]


def payload_array(payload: bytes) -> np.ndarray:
    """Parse a ``.npy`` payload (raises ValueError on a damaged header)."""
    return np.lib.format.read_array(io.BytesIO(payload), allow_pickle=False)


def _npy_header_len(payload: bytes) -> int:
    major = payload[6]
    return 10 + int.from_bytes(payload[8:10], "little") if major == 1 else 12 + int.from_bytes(payload[8:12], "little")


def first_difference(expected: bytes, got: bytes) -> int | None:
    """Offset of the first differing byte (or of the end of the shorter one), None if equal."""
    if expected == got:
        return None
    n = min(len(expected), len(got))
    a = np.frombuffer(expected[:n], np.uint8)
    b = np.frombuffer(got[:n], np.uint8)
    diff = np.flatnonzero(a != b)
    return int(diff[0]) if len(diff) else n


def describe_payload_offset(payload: bytes, offset: int, arr: np.ndarray) -> tuple[str, int | None]:
    """('.npy header' | 'element', flat element index or None) of a byte inside a payload."""
    header = _npy_header_len(payload)
    if offset < header:
        return ".npy header", None
    return "element", (offset - header) // arr.dtype.itemsize


def describe_offset(data: bytes, offset: int) -> str:
    """Which zip structure of a `npz_bytes` file holds byte ``offset``."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        start_dir = zf.start_dir
    for info in infos:
        n_name, n_extra = struct.unpack_from("<HH", data, info.header_offset + 26)
        start = info.header_offset + _LOCAL_HEADER + n_name + n_extra
        if info.header_offset <= offset < start:
            return f"local file header of member {info.filename!r}"
        if start <= offset < start + info.file_size:
            return f"payload of member {info.filename!r}"
    pos = start_dir
    for info in infos:
        size = _CENTRAL_ENTRY + len(info.filename.encode()) + len(info.extra) + len(info.comment)
        if pos <= offset < pos + size:
            return f"central directory entry of member {info.filename!r}"
        pos += size
    return "end of central directory record"
