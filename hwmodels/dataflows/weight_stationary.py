"""Weight-stationary (WS) dataflow: the second operand sits in the PEs.

Mapping (SCALE-Sim `systolic_compute_ws.py`): ``Sr = k'`` (packed reduction)
along rows, ``Sc = n`` along columns, ``T = m`` rows of the first operand
stream through. Each fold preloads an ``R x C`` weight tile (``P = R``
cycles), streams the ``m`` input rows with ``R - 1`` fill skew, and drains
the last column ``C - 1`` cycles later:

    per fold  = R + m + R + C - 2            (SCALE-Sim: 2R + C + T - 2)
    folds     = batch * ceil(k'/R) * ceil(n/C)

Global-buffer <-> array traffic (bytes, all ``batch`` products):

* weights ``B``: every element loaded once: ``batch * k * n * b_bits/8``;
* inputs ``A``: re-streamed for every column fold:
  ``batch * m * k * a_bits/8 * ceil(n/C)`` (SCALE-Sim ``ifmap_reads``);
* partial sums: ``ceil(k'/R) - 1`` spills, see `dataflows.psum_bytes`;
* outputs: ``batch * m * n * out_bits/8`` once.

Off-chip tiling (`hwmodels.tiling`): when a layer spills, the natural order
blocks the weights (whole columns of B stay in the buffer) and re-fetches
the inputs once per block; the other order is taken only if cheaper.
"""

from __future__ import annotations

from .gemm_traffic import ArrayTraffic, GemmShape, psum_bytes

NAME = "weight_stationary"
PRELOADS = True
NATURAL_BLOCK = "B"


def mapping(g: GemmShape) -> tuple[int, int, int]:
    return g.k_packed, g.n, g.m


def array_traffic(g: GemmShape, rows: int, cols: int) -> ArrayTraffic:
    row_folds = -(-g.k_packed // rows)
    col_folds = -(-g.n // cols)
    a = g.batch * g.m * g.k * g.a_bits / 8
    b = g.batch * g.k * g.n * g.b_bits / 8
    ps_r, ps_w = psum_bytes(g, row_folds)
    return ArrayTraffic(a * col_folds, b, ps_r, ps_w, g.batch * g.m * g.n * g.out_bits / 8)
