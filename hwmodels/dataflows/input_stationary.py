"""Input-stationary (IS) dataflow: the first operand sits in the PEs.

Mapping (SCALE-Sim `systolic_compute_is.py`): ``Sr = k'`` (packed reduction)
along rows, ``Sc = m`` along columns (each column holds one input row),
``T = n`` columns of the second operand stream through. Like WS, each fold
preloads its stationary tile (``P = R`` cycles):

    per fold  = R + n + R + C - 2            (SCALE-Sim: 2R + C + T - 2)
    folds     = batch * ceil(k'/R) * ceil(m/C)

Global-buffer <-> array traffic (bytes, all ``batch`` products):

* inputs ``A``: every element loaded once: ``batch * m * k * a_bits/8``;
* second operand ``B``: re-streamed for every column fold:
  ``batch * k * n * b_bits/8 * ceil(m/C)``;
* partial sums: ``ceil(k'/R) - 1`` spills, see `dataflows.psum_bytes`;
* outputs: ``batch * m * n * out_bits/8`` once.

Off-chip tiling (`hwmodels.tiling`): when a layer spills, the natural order
blocks the inputs (whole rows of A stay in the buffer) and re-fetches the
second operand once per block; the other order is taken only if cheaper.
"""

from __future__ import annotations

from .gemm_traffic import ArrayTraffic, GemmShape, psum_bytes

NAME = "input_stationary"
PRELOADS = True
NATURAL_BLOCK = "A"


def mapping(g: GemmShape) -> tuple[int, int, int]:
    return g.k_packed, g.m, g.n


def array_traffic(g: GemmShape, rows: int, cols: int) -> ArrayTraffic:
    row_folds = -(-g.k_packed // rows)
    col_folds = -(-g.m // cols)
    a = g.batch * g.m * g.k * g.a_bits / 8
    b = g.batch * g.k * g.n * g.b_bits / 8
    ps_r, ps_w = psum_bytes(g, row_folds)
    return ArrayTraffic(a, b * col_folds, ps_r, ps_w, g.batch * g.m * g.n * g.out_bits / 8)
