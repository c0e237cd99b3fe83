"""Systolic-array cycle and array<->buffer traffic models, one module per dataflow.

A GEMM ``[m, k] x [k, n]`` (``batch`` independent ones per layer) is mapped
onto an ``R x C`` array SCALE-Sim style (Samajdar et al., ISPASS 2020,
`scalesim/compute/systolic_compute_{ws,os,is}.py`): the dataflow chooses
which dimensions are spatial along rows (``Sr``) and columns (``Sc``) and
which streams in time (``T``):

==================  ====  ====  ====  ===========================
dataflow            Sr    Sc    T     stationary in the PEs
==================  ====  ====  ====  ===========================
weight_stationary   k'    n     m     second operand (weights)
input_stationary    k'    m     n     first operand (activations)
output_stationary   m     n     k'    outputs (accumulators)
==================  ====  ====  ====  ===========================

``k' = ceil(k / p)`` where ``p`` is the precision mode's MACs per PE per cycle:
a precision-scalable PE sums p products of the reduction dimension per cycle
(BitFusion-style), so the reduction dimension is packed p-fold.

Folds: ``F = batch * ceil(Sr / R) * ceil(Sc / C)``; a partial fold is padded to
the full array (it costs as many cycles as a full one).

One fold, derived event by event (SCALE-Sim v2 demand matrices):

* preload ``P``: WS/IS shift the stationary operand in from the array edge,
  one row per cycle: ``P = R`` (OS has nothing to preload: ``P = 0``);
* stream: element ``t`` of the stream enters PE row ``r`` at ``t + r`` (input
  skew) and reaches column ``c`` at ``t + r + c``; the result of stream element
  ``T - 1`` leaves the last PE at ``(T - 1) + (R - 1) + (C - 1) + 1``.
  So a fold takes ``P + T + R + C - 2`` cycles: ``R - 1`` fill skew and
  ``C - 1`` drain skew on top of the ``T`` stream cycles.

``fold_overlap`` (a YAML field of ``pe_array``) picks how folds chain:

* ``per_fold`` (SCALE-Sim): every fold pays preload, fill and drain:
  ``cycles = F * (P + T + R + C - 2)``.
* ``pipelined`` (ZigZag-like; needs a spare stationary register per PE and a
  shadow accumulator): the next fold's stream starts as soon as the current
  stream has entered and its stationary operand is preloaded underneath:
  ``cycles = P + (T + R + C - 2) + (F - 1) * max(T, P)``.

With ``F = 1`` both are equal; ``pipelined <= per_fold`` always.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from . import input_stationary, output_stationary, weight_stationary
from .gemm_traffic import ArrayTraffic, GemmShape, psum_bytes

__all__ = ["GemmShape", "FoldTiming", "ArrayTraffic", "systolic_cycles", "get", "fold_timing",
           "psum_bytes"]


@dataclass(frozen=True)
class FoldTiming:
    sr: int
    sc: int
    t: int
    preload: int
    row_folds: int
    col_folds: int
    folds: int
    cycles: int


def systolic_cycles(sr: int, sc: int, t: int, rows: int, cols: int, batch: int,
                    preload: int, overlap: str) -> tuple[int, int, int, int]:
    """(row_folds, col_folds, folds, cycles) by the module docstring's formulas."""
    row_folds = -(-sr // rows)
    col_folds = -(-sc // cols)
    folds = batch * row_folds * col_folds
    if folds == 0 or t == 0:
        return row_folds, col_folds, folds, 0
    one = preload + t + rows + cols - 2
    if overlap == "per_fold":
        cycles = folds * one
    elif overlap == "pipelined":
        cycles = one + (folds - 1) * max(t, preload)
    else:
        raise ValueError(f"unknown fold_overlap {overlap!r}")
    return row_folds, col_folds, folds, cycles


def get(dataflow: str) -> ModuleType:
    """The module implementing ``dataflow`` (mapping + array traffic)."""
    table = {m.NAME: m for m in (weight_stationary, output_stationary, input_stationary)}
    return table[dataflow]


def fold_timing(g: GemmShape, rows: int, cols: int, dataflow: str, overlap: str) -> FoldTiming:
    mod = get(dataflow)
    sr, sc, t = mod.mapping(g)
    preload = rows if mod.PRELOADS else 0
    rf, cf, folds, cycles = systolic_cycles(sr, sc, t, rows, cols, g.batch, preload, overlap)
    return FoldTiming(sr, sc, t, preload, rf, cf, folds, cycles)
