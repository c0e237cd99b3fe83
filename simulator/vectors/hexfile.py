"""``$readmemh`` text files: one value per line, fixed-width lowercase hex.

Encodings (the manifest names one per tensor):

* ``twos_complement`` -- a signed ``bits``-wide integer, written as its low
  ``bits`` bits in ``ceil(bits / 4)`` hex digits (so -1 at 8 bits is ``ff``,
  -1 at 4 bits is ``f``, -3 at 6 bits is ``3d``). Sign-extend from bit
  ``bits - 1`` when reading into a wider register.
* ``unsigned`` -- a non-negative ``bits``-wide integer in ``ceil(bits / 4)`` digits.
* ``ieee754`` -- float32 / float64 bit patterns in 8 / 16 digits (the host-side
  float images and reference float scales; never read by the integer datapath).

Elements are written in C (row-major) order of the tensor's shape, batch
first; line ``i + 1`` holds flat element ``i``. Every line, including the
last, ends in ``\\n``. Codes of 4 bits or fewer are one digit per line, which
``$readmemh`` loads into a ``logic [3:0] mem[]`` directly; a byte-packed int4
memory (two codes per byte, element ``2j`` in the low nibble, ``2j + 1`` in the
high nibble) is a testbench-side repacking of the same sequence.

Future extension (two-scaled codes, TSPTQ V-2SF): a ``b``-bit code with a
scale-select flag is written as ``b + 1`` bits, the flag in the MSB (1 =
coarse scale) and the code in the low ``b`` bits; its manifest record will
carry ``"flag_bit": true``.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["hex_digits", "encode_hex", "decode_hex", "HexFormatError"]

_FLOAT_VIEW = {np.dtype(np.float32): (np.uint32, 8), np.dtype(np.float64): (np.uint64, 16)}


class HexFormatError(ValueError):
    """A line that is not a valid value; ``line`` is 1-based."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line


def hex_digits(bits: int, encoding: str) -> int:
    """Digits per line for a ``bits``-wide value."""
    if encoding == "ieee754":
        return 16 if bits == 64 else 8
    return (bits + 3) // 4


def encode_hex(arr: np.ndarray, bits: int, encoding: str) -> bytes:
    """The file's bytes for ``arr`` (see the module docstring)."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    digits = hex_digits(bits, encoding)
    if encoding == "ieee754":
        view, _ = _FLOAT_VIEW[flat.dtype]
        values = flat.view(view).tolist()
    else:
        values = (flat.astype(np.int64) & np.int64((1 << bits) - 1 if bits < 64 else -1)).tolist()
    fmt = f"{{:0{digits}x}}\n"
    return "".join(fmt.format(v) for v in values).encode("ascii")


_HEX_LINE = {}


def decode_hex(data: bytes, shape, dtype, bits: int, encoding: str, signed: bool) -> np.ndarray:
    """Parse a file written by `encode_hex`; `HexFormatError` names the first bad line."""
    digits = hex_digits(bits, encoding)
    pattern = _HEX_LINE.setdefault(digits, re.compile(rb"[0-9a-f]{%d}" % digits))
    n = int(np.prod(shape, dtype=np.int64))
    lines = data.split(b"\n")
    if lines[-1] != b"":
        raise HexFormatError(len(lines), "last line does not end in a newline")
    lines.pop()
    for i, line in enumerate(lines[:n]):
        if not pattern.fullmatch(line):
            raise HexFormatError(i + 1, f"expected {digits} lowercase hex digits")   # content not echoed
    if len(lines) != n:
        raise HexFormatError(min(len(lines), n) + 1, f"expected {n} lines, got {len(lines)}")
    raw = np.array([int(v, 16) for v in lines], dtype=np.uint64)
    dtype = np.dtype(dtype)
    if encoding == "ieee754":
        return raw.astype(_FLOAT_VIEW[dtype][0]).view(dtype).reshape(shape)
    vals = raw.astype(np.int64) if bits < 64 else raw.view(np.int64)
    if bits < 64 and (vals >> bits).any():
        i = int(np.argmax((vals >> bits) != 0))
        raise HexFormatError(i + 1, f"value {lines[i].decode()} does not fit in {bits} bits")
    if signed and bits < 64:
        vals = np.where(vals >= (1 << (bits - 1)), vals - (1 << bits), vals)
    return vals.astype(dtype).reshape(shape)
