"""Check a vector set (``simulate verify-vectors DIR``).

Order of checks; the first problem found is reported and nothing after it:

1. ``manifest.json`` parses and every record's ``record_sha256`` holds
   (located to a line/column or to one record);
2. every listed file exists with its recorded size and SHA-256. A file that
   differs is located by rebuilding its expected bytes from the *other*,
   verified copy of the same values (every tensor is stored twice, in
   ``vectors.npz`` and as hex; every integer param array of ``qvit.npz`` is also a ``params.*`` tensor)
   and pointing at the first differing byte: hex -> line, flat index and
   multi-index; npz -> member, element or ``.npy`` header, or the zip
   structure (local header, central directory) that holds the byte;
3. the simulator is re-run with the stored QuantizedGraph on the stored images
   and every tensor compared: the first difference is reported as layer,
   tensor, flat index, multi-index, expected (stored) and got (re-run).

Exit status: 0 all match, 1 mismatch or corruption, 2 bad input (no such
directory, no manifest).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.vectors import manifest as mf
from simulator.vectors.export import QVIT_FILE, VECTORS_FILE, qvit_header_array, qvit_member_tensor, qvit_payloads
from simulator.vectors.hexfile import HexFormatError, decode_hex, encode_hex
from simulator.vectors.npzfile import (describe_offset, describe_payload_offset, first_difference, npy_payload,
                                       npz_bytes, payload_array)

__all__ = ["verify_vectors", "verify_main", "Mismatch"]


class Mismatch(Exception):
    """The vector set does not verify; the message locates the first problem."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _index(shape, flat: int) -> list[int]:
    return [int(i) for i in np.unravel_index(flat, shape)] if len(shape) else []


class _VectorSet:
    """The manifest and raw file bytes, with access to each tensor's two copies."""

    def __init__(self, root: Path, m: dict):
        self.root, self.m = root, m
        self.tensors = {t["name"]: t for t in m["tensors"]}
        self.files = {f["path"]: f for f in m["files"]}
        for i, f in enumerate(m["files"]):
            _check_member_path(root, f["path"], f"files[{i}].path")
        for i, t in enumerate(m["tensors"]):
            if t["hex_file"] not in self.files:
                raise InputError(f"{root / mf.MANIFEST}: tensors[{i}].hex_file: expected one of the listed files")
        self.raw: dict[str, bytes] = {}
        for f in m["files"]:
            p = root / f["path"]
            if not p.is_file():
                raise Mismatch(f"{f['path']}: missing")
            self.raw[f["path"]] = p.read_bytes()
        self.members = {e[0]: e for e in self.files[VECTORS_FILE]["members"]}

    def _from_npz(self, name: str) -> np.ndarray | None:
        _, start, size, sha = self.members[name]
        payload = self.raw[VECTORS_FILE][start:start + size]
        if _sha(payload) != sha:
            return None
        arr = payload_array(payload)
        return arr if mf.tensor_sha256(arr) == self.tensors[name]["sha256"] else None

    def _from_hex(self, name: str) -> np.ndarray | None:
        t = self.tensors[name]
        try:
            arr = decode_hex(self.raw[t["hex_file"]], t["shape"], np.dtype(t["dtype"]), t["bits"], t["encoding"],
                             t["signed"])
        except HexFormatError:
            return None
        return arr if mf.tensor_sha256(arr) == t["sha256"] else None

    def trusted(self, name: str) -> np.ndarray | None:
        """The tensor's values from whichever copy matches its manifest hash, else None."""
        if name not in self.tensors:
            return None
        arr = self._from_npz(name)
        return arr if arr is not None else self._from_hex(name)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,200}")


def _check_member_path(root: Path, rel, where: str) -> None:
    """A manifest's file name must be ``NAME`` or ``hex/NAME`` (plain names, no ``..``, not absolute),
    and must not be a symlink: a vector set is untrusted input and is read only inside its folder."""
    parts = rel.split("/") if isinstance(rel, str) else []
    ok = (len(parts) == 1 or (len(parts) == 2 and parts[0] == "hex")) and all(
        _PLAIN_NAME.fullmatch(p) and ".." not in p for p in parts)
    if not ok:
        raise InputError(f"{root / mf.MANIFEST}: {where}: expected a plain file name inside the folder "
                         f"(NAME or hex/NAME, no '..', not absolute), got {str(rel)[:80]!r}")
    p = root / rel
    if (root / "hex").is_symlink() or p.is_symlink():
        raise InputError(f"{root / mf.MANIFEST}: {where}: {rel} is a symlink; expected a regular file inside "
                         "the folder")


def _locate_hex(vs: _VectorSet, f: dict, raw: bytes) -> str:
    path = f["path"]
    t = next((t for t in vs.m["tensors"] if t["hex_file"] == path), None)
    value = vs.trusted(t["name"]) if t else None
    if value is None:
        return f"{path}: corrupted (sha256 mismatch), and no intact copy of its tensor to locate the damage"
    expected = encode_hex(value, t["bits"], t["encoding"])
    off = first_difference(expected, raw)
    line = expected[:off].count(b"\n") + 1
    flat = line - 1
    start = expected.rfind(b"\n", 0, off) + 1
    got_end = raw.find(b"\n", start)
    got_line = raw[start:got_end if got_end >= 0 else len(raw)]
    exp_line = expected[start:expected.find(b"\n", start)]
    # Only a parsed number is echoed, never raw file content (the folder is untrusted).
    got = got_line.decode() if re.fullmatch(rb"[0-9a-f]{1,16}", got_line) else \
        f"a line that is not {len(exp_line)} lowercase hex digits ({len(got_line)} bytes)"
    return (f"{path} line {line} (tensor {t['name']}, layer {t['layer']}, flat index {flat}, "
            f"index {_index(t['shape'], flat)}): expected {exp_line.decode()} ({value.reshape(-1)[flat]}), "
            f"got {got}")


def _counterpart(vs: _VectorSet, f: dict, member: str) -> tuple[np.ndarray | None, str | None]:
    """Trusted values of an npz member from the other copy, and the tensor name."""
    if f["path"] == VECTORS_FILE:
        return (vs._from_hex(member) if member in vs.tensors else None), member
    name = qvit_member_tensor(member)
    return vs.trusted(name), name


def _locate_npz(vs: _VectorSet, f: dict, raw: bytes) -> str:
    path, payloads = f["path"], {}
    for member, start, size, sha in f["members"]:
        payload = raw[start:start + size]
        payloads[member] = payload
        if _sha(payload) == sha:
            continue
        value, tname = _counterpart(vs, f, member)
        if value is None:
            return f"{path} bytes {start}..{start + size - 1}: member {member!r} corrupted (sha256 mismatch)"
        expected = npy_payload(value)
        off = first_difference(expected, payload)
        region, flat = describe_payload_offset(expected, off, value)
        at = f"{path} byte {start + off}: member {member!r}"
        if flat is None:
            return f"{at} {region} corrupted: expected 0x{expected[off]:02x}, got 0x{payload[off]:02x}"
        header_len = len(expected) - value.nbytes
        got = np.frombuffer(payload, value.dtype, 1, header_len + flat * value.dtype.itemsize)[0]
        layer = vs.tensors[tname]["layer"] if tname in vs.tensors else None
        return (f"{at} (tensor {tname}, layer {layer}), flat index {flat}, index {_index(value.shape, flat)}: "
                f"expected {value.reshape(-1)[flat]}, got {got}")
    expected = npz_bytes(payloads)
    off = first_difference(expected, raw)
    if off is None or off >= len(expected):
        return f"{path}: corrupted (sha256 mismatch) beyond the zip structure"
    return (f"{path} byte {off}: {describe_offset(expected, off)} corrupted: "
            f"expected 0x{expected[off]:02x}, got 0x{raw[off]:02x}")


def _check_files(vs: _VectorSet) -> None:
    for f in vs.m["files"]:
        raw = vs.raw[f["path"]]
        if len(raw) == f["bytes"] and _sha(raw) == f["sha256"]:
            continue
        if len(raw) != f["bytes"]:
            raise Mismatch(f"{f['path']}: {len(raw)} bytes, manifest says {f['bytes']} (truncated or extended)")
        raise Mismatch(_locate_hex(vs, f, raw) if f["kind"] == "hex" else _locate_npz(vs, f, raw))


def _rerun(vs: _VectorSet) -> int:
    from simulator.int_ops import GraphIntegerExecutor
    from simulator.qgraph import LegacyFormatError, QuantizedGraph
    from simulator.vectors.tensors import collect_tensors

    stored = {name: vs.trusted(name) for name in vs.tensors}
    try:
        q = QuantizedGraph.load(vs.root / QVIT_FILE)
    except LegacyFormatError:
        raise InputError(f"{vs.root}: exported by the legacy walks ({QVIT_FILE} is a format_version 1 "
                         "QuantizedViT), which were removed; export the vectors again with this version "
                         "(old golden sets are checked against the graph by scripts/verify_golden_on_graph.py)"
                         ) from None
    result = GraphIntegerExecutor(q).run(stored["images"])
    header = qvit_header_array(qvit_payloads(q))
    fresh = {t.name: t.array for t in collect_tensors(q, stored["images"], result.codes, result.trace.extras, header)}
    for name in fresh:
        if name not in vs.tensors:
            raise Mismatch(f"re-run produced tensor {name}, which the vector set does not have")
    for name, t in vs.tensors.items():
        if name not in fresh:
            raise Mismatch(f"tensor {name} (layer {t['layer']}): the re-run does not produce it")
        exp, got = stored[name], fresh[name]
        if exp.shape != got.shape:
            raise Mismatch(f"layer {t['layer']}: tensor {name}: shape {list(exp.shape)} stored, {list(got.shape)} re-run")
        diff = np.flatnonzero(exp.reshape(-1) != got.reshape(-1))
        if len(diff):
            i = int(diff[0])
            raise Mismatch(f"layer {t['layer']}: tensor {name}: flat index {i}, index {_index(exp.shape, i)}: "
                           f"expected {exp.reshape(-1)[i]}, got {got.reshape(-1)[i]}")
    return len(vs.tensors)


def verify_vectors(directory: str | Path) -> str:
    """``"all N tensors match"``, or raise `Mismatch` (corruption / difference) or `InputError`."""
    root = Path(directory)
    if root.is_symlink():
        raise InputError(f"{root}: is a symlink; expected the vector-set directory itself")
    if not root.is_dir():
        raise InputError(f"{root}: no such directory")
    if (root / mf.MANIFEST).is_symlink():
        raise InputError(f"{root / mf.MANIFEST}: is a symlink; expected a regular file inside the folder")
    if not (root / mf.MANIFEST).is_file():
        raise InputError(f"{root}: no {mf.MANIFEST} (not a vector set written by export-vectors)")
    try:
        m = mf.check((root / mf.MANIFEST).read_bytes())
    except mf.ManifestProblem as e:
        raise Mismatch(str(e)) from None
    try:
        vs = _VectorSet(root, m)
        _check_files(vs)
        n = _rerun(vs)
    except (KeyError, TypeError, IndexError) as e:   # sealed yet malformed: written by something else
        raise Mismatch(f"{mf.MANIFEST}: malformed record ({type(e).__name__}: {e})") from None
    return f"all {n} tensors match"


def verify_main(argv: list[str]) -> int:
    """``simulate verify-vectors DIR``: print the verdict; exit 0 match, 1 mismatch, 2 bad input."""
    from simulator.cli import _Parser, add_logging_arguments

    p = _Parser(prog="simulate verify-vectors", description="Check a vector set written by export-vectors.")
    p.add_argument("dir", metavar="DIR", help="a directory written by simulate export-vectors")
    add_logging_arguments(p)      # the same -q / -v / --no-progress as every other subcommand
    args = p.parse_args(argv)
    try:
        print(verify_vectors(args.dir))
    except Mismatch as e:
        print(f"MISMATCH: {e}")
        return 1
    return 0
