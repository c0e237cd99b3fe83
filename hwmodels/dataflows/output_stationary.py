"""Output-stationary (OS) dataflow: each PE accumulates one output.

Mapping (SCALE-Sim `systolic_compute_os.py`): ``Sr = m`` along rows,
``Sc = n`` along columns, ``T = k'`` (packed reduction) streams through: the
first operand enters from the left edge, the second from the top, both
skewed. Nothing is preloaded (``P = 0``); PE ``(r, c)`` does its last MAC at
``(T - 1) + r + c``, so

    per fold  = k' + R + C - 2               (SCALE-Sim v2 OS demand matrices)
    folds     = batch * ceil(m/R) * ceil(n/C)

Global-buffer <-> array traffic (bytes, all ``batch`` products):

* ``A`` re-streamed for every column fold: ``batch*m*k*a_bits/8 * ceil(n/C)``;
* ``B`` re-streamed for every row fold: ``batch*k*n*b_bits/8 * ceil(m/R)``;
* no partial sums leave the array (the whole reduction runs in place);
* outputs: ``batch * m * n * out_bits/8`` once.

Off-chip tiling (`hwmodels.tiling`): when a layer spills, the natural order
keeps row blocks of A with their output rows in the buffer (output rows
complete per block) and re-fetches B once per block; the other order is
taken only if cheaper.
"""

from __future__ import annotations

from .gemm_traffic import ArrayTraffic, GemmShape

NAME = "output_stationary"
PRELOADS = False
NATURAL_BLOCK = "A"


def mapping(g: GemmShape) -> tuple[int, int, int]:
    return g.m, g.n, g.k_packed


def array_traffic(g: GemmShape, rows: int, cols: int) -> ArrayTraffic:
    row_folds = -(-g.m // rows)
    col_folds = -(-g.n // cols)
    a = g.batch * g.m * g.k * g.a_bits / 8
    b = g.batch * g.k * g.n * g.b_bits / 8
    return ArrayTraffic(a * col_folds, b * row_folds, 0.0, 0.0, g.batch * g.m * g.n * g.out_bits / 8)
