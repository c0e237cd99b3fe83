"""Per-image digests of a tensor's codes: bit-exactness checks without keeping the codes.

The main job checks that the fake-quant reference and the simulator agree at every tensor boundary
of every checked image. Keeping both executors' codes for that costs ~18M codes per DeiT-S image and
executor -- copies, page faults and memory the checks themselves do not need. `row_digests` reduces
each image's codes of one tensor to one 64-bit word as the executor makes them, and two executors
agree on an image's tensor iff (up to the collision bound below) their words are equal.

The digest of a row ``v_0 .. v_{m-1}`` (each code read as a signed 64-bit integer, so an int8 and an
int64 array holding the same integers have the same digest, and a float array of integer-valued
codes too) is FNV-1a over 64-bit words, in ``L = 4`` interleaved lanes:

    lane_l = seed_l;   lane_l <- (lane_l XOR v_j) * P  (mod 2**64)   for j = l, l + L, l + 2L, ...
    h = m;             h <- (h XOR lane_l) * P                         for l = 0 .. L-1
    digest = fmix64(h)                                                 (MurmurHash3's finaliser)

with ``P = 0x100000001b3`` (the FNV-1 64-bit prime) and ``seed_l = 0xcbf29ce484222325 + l``. Each
step ``x -> (x XOR v) * P`` is a bijection of x for fixed v (P is odd) and differs for different v
at fixed x; fmix64 is a bijection. Hence two rows of the same length that differ in **exactly one**
code always have different digests (the differing lane differs from that step on, every later step
and the combination preserve the difference). Rows differing in several codes collide with
probability about 2**-64 for unstructured differences -- the check compares digests of every tensor
of every image, so a mismatch would have to collide at every differing tensor. Rows of different
length are caught before digests are compared (shapes are part of the comparison).

Lanes: four independent multiply chains, so the loop is not one serial dependency per code.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from simulator.jit import row_kernel

__all__ = ["row_digests"]

_P = np.uint64(0x100000001B3)
_SEED = np.uint64(0xCBF29CE484222325)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


@row_kernel
def _digest_rows(a, out):
    n, m = a.shape
    for i in prange(n):
        l0 = _SEED
        l1 = _SEED + np.uint64(1)
        l2 = _SEED + np.uint64(2)
        l3 = _SEED + np.uint64(3)
        full = m - m % 4
        for j in range(0, full, 4):
            l0 = (l0 ^ np.uint64(np.int64(a[i, j]))) * _P
            l1 = (l1 ^ np.uint64(np.int64(a[i, j + 1]))) * _P
            l2 = (l2 ^ np.uint64(np.int64(a[i, j + 2]))) * _P
            l3 = (l3 ^ np.uint64(np.int64(a[i, j + 3]))) * _P
        if full < m:
            l0 = (l0 ^ np.uint64(np.int64(a[i, full]))) * _P
        if full + 1 < m:
            l1 = (l1 ^ np.uint64(np.int64(a[i, full + 1]))) * _P
        if full + 2 < m:
            l2 = (l2 ^ np.uint64(np.int64(a[i, full + 2]))) * _P
        h = np.uint64(m)
        h = (h ^ l0) * _P
        h = (h ^ l1) * _P
        h = (h ^ l2) * _P
        h = (h ^ l3) * _P
        h ^= h >> _S33
        h *= _M1
        h ^= h >> _S33
        h *= _M2
        h ^= h >> _S33
        out[i] = h


def row_digests(codes) -> np.ndarray:
    """uint64 digest of each image (row of axis 0) of ``codes`` (any integer, bool or integer-valued
    float array, batch-first), by the formula of the module docstring."""
    a = np.asarray(codes)
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    elif a.dtype.kind not in "iuf":
        raise TypeError(f"row_digests: expected integer, bool or float codes, got {a.dtype}")
    n = a.shape[0] if a.ndim else 1
    a = np.ascontiguousarray(a.reshape(n, -1))
    out = np.empty(n, dtype=np.uint64)
    if n:
        _digest_rows(a, out)
    return out
