"""``manifest.json`` of a vector set: records that each carry their own checksum.

Layout::

    {"header":  {format, format_version, tool, tool_version, model, recipe,
                 n_images, n_tensors, element_order, ...},
     "files":   [{path, kind (qvit | npz | hex), bytes, sha256,
                  members: [[name, payload_offset, payload_bytes, sha256], ...] (npz kinds)}, ...],
     "tensors": [{name, role, layer, shape, dtype, bits, signed, encoding,
                  bits_source, hex_file, hex_digits, npz_member, sha256}, ...],
     "layers":  [{name, kind, inputs, params, outputs[, select]}, ...]}

Every record (the header and each element of the three lists) holds
``record_sha256``: the SHA-256 of the record's canonical JSON (sorted keys, no
whitespace) without that field. A corrupted manifest is therefore located
to one record, or, when it no longer parses, to a line and column. A
tensor's ``sha256`` hashes its values (C order, the record's dtype,
little-endian), independent of the file that holds them.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

__all__ = ["MANIFEST", "FORMAT", "FORMAT_VERSION", "seal", "dumps", "check", "tensor_sha256", "ManifestProblem"]

MANIFEST = "manifest.json"
FORMAT = "vit-intsim-vectors"
FORMAT_VERSION = 1
_SECTIONS = ("header", "files", "tensors", "layers")


class ManifestProblem(ValueError):
    """The manifest is corrupted; the message says where."""


def tensor_sha256(arr: np.ndarray) -> str:
    a = np.ascontiguousarray(arr)
    return hashlib.sha256(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def _digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(manifest: dict) -> dict:
    """Add ``record_sha256`` to the header and to every list record."""
    out = {"header": {**manifest["header"], "record_sha256": _digest(manifest["header"])}}
    for section in _SECTIONS[1:]:
        out[section] = [{**r, "record_sha256": _digest(r)} for r in manifest[section]]
    return out


def dumps(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1) + "\n").encode("utf-8")


def _where(record: dict, section: str, index: int) -> str:
    label = record.get("name", record.get("path")) if isinstance(record, dict) else None
    return f"{section}[{index}]" + (f" ({label!r})" if isinstance(label, str) else "")


def check(data: bytes) -> dict:
    """Parse and check every record; `ManifestProblem` locates the first bad one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ManifestProblem(f"{MANIFEST} line {line}: not UTF-8 (byte offset {e.start})") from None
    try:
        m = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestProblem(f"{MANIFEST} line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") from None
    if not isinstance(m, dict) or set(m) != set(_SECTIONS):
        keys = sorted(m) if isinstance(m, dict) else type(m).__name__
        raise ManifestProblem(f"{MANIFEST}: top-level keys {keys}, expected {list(_SECTIONS)}")
    records = [("header", 0, m["header"])]
    for section in _SECTIONS[1:]:
        if not isinstance(m[section], list):
            raise ManifestProblem(f"{MANIFEST}: {section}: expected a list")
        records += [(section, i, r) for i, r in enumerate(m[section])]
    for section, i, r in records:
        where = "header" if section == "header" else _where(r, section, i)
        if not isinstance(r, dict) or "record_sha256" not in r:
            raise ManifestProblem(f"{MANIFEST}: {where}: record checksum missing")
        if r["record_sha256"] != _digest(r):
            raise ManifestProblem(f"{MANIFEST}: {where}: record corrupted (record_sha256 mismatch)")
    h = m["header"]
    if h.get("format") != FORMAT or h.get("format_version") != FORMAT_VERSION:
        raise ManifestProblem(f"{MANIFEST}: header: format {h.get('format')!r} v{h.get('format_version')!r}, "
                              f"expected {FORMAT!r} v{FORMAT_VERSION}")
    if h.get("n_tensors") != len(m["tensors"]) or h.get("n_files") != len(m["files"]):
        raise ManifestProblem(f"{MANIFEST}: header: n_tensors/n_files disagree with the lists")
    return m
