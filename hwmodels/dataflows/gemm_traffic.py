"""A GEMM as the array sees it and the bytes it moves between buffer and array.

Shared by the per-dataflow modules (`weight_stationary`, `output_stationary`,
`input_stationary`); the package `__init__` documents the timing model.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GemmShape", "ArrayTraffic", "psum_bytes"]


@dataclass(frozen=True)
class GemmShape:
    """One GEMM layer as the array sees it (per image)."""

    m: int
    k: int
    n: int
    batch: int = 1
    a_bits: int = 8
    b_bits: int = 8
    out_bits: int = 8
    acc_bits: int = 32
    pack: int = 1  # MACs per PE per cycle of the precision mode

    @property
    def k_packed(self) -> int:
        return -(-self.k // self.pack)

    @property
    def macs(self) -> int:
        return self.batch * self.m * self.k * self.n


@dataclass(frozen=True)
class ArrayTraffic:
    """Bytes between the global buffer and the array for one layer (all batches)."""

    a_read: float
    b_read: float
    psum_read: float
    psum_write: float
    out_write: float

    @property
    def read(self) -> float:
        return self.a_read + self.b_read + self.psum_read

    @property
    def write(self) -> float:
        return self.psum_write + self.out_write


def psum_bytes(g: GemmShape, row_folds: int) -> tuple[float, float]:
    """Partial sums spilled to the global buffer when the reduction is folded.

    All but the last reduction fold write their ``m x n`` partial sums at
    ``acc_bits`` and the next fold reads them back (SCALE-Sim counts the
    writes of every fold as ofmap writes; we also count the read-back). The
    last fold's output stage adds, requantizes and writes ``out_bits``.
    Returns (read_bytes, write_bytes).
    """
    spills = g.batch * g.m * g.n * (row_folds - 1) * g.acc_bits / 8
    return spills, spills

