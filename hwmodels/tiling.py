"""Global-buffer tiling: which bytes cross the off-chip interface, per layer.

Each layer is costed on its own (that is what makes costs summable).
Whatever streams through the buffer while the array computes is double
buffered when ``double_buffering: true`` (two copies: one filled while the
other is used), so a streamed piece costs ``copies = 2`` times its size;
tensors that stay resident are held once.

GEMM ``[m, k] x [k, n]`` (``batch`` products), tensor sizes in bytes
``A = batch*m*k*a_bits/8``, ``B = batch*k*n*b_bits/8``, ``O = batch*m*n*out_bits/8``:

1. **Resident.** If the activation tensors (``A + O``, plus ``B`` when the
   second operand is an activation) fit in ``size_bytes`` next to ``copies``
   array-wide strips of the weights (``k * min(n, C) * b_bits/8`` each), the
   activations stay on chip and only the weights cross the interface, once:
   off-chip reads = weight bytes.
2. **Spilled.** Otherwise the activations live off chip and, for each of the
   ``batch`` products, one input operand X is cut into blocks of whole lines
   (rows of A or columns of B, each with the full k so no partial sum leaves
   the chip) that fit next to a streaming strip of the other operand Y
   (``s`` lines, ``s = R`` rows of A or ``C`` columns of B) and its output tile
   at ``acc_bits``, all double buffered (``usable = size_bytes / copies``):

       lines per block  x = floor((usable - s*k*y_bits/8) / (k*x_bits/8 + s*acc_bits/8))
       blocks           b = ceil(lines(X) / x)
       off-chip reads   = X + b * Y            (Y re-fetched once per block)
       off-chip writes  = O

   Both orders (block A / block B) are tried and the cheaper taken; ties go
   to the dataflow's natural order (WS blocks the weights, IS and OS block
   the inputs). A smaller buffer means more blocks, hence more off-chip
   bytes and cycles. If no order fits even one line, the layer cannot run:
   `gemm_offchip` returns None and `min_gemm_buffer` says what would fit.

Weight bytes beyond the matrix (bias, scales: ``weight_bytes - B``) cross
once. Element-wise/SFU layers: resident if input + output fit in
``size_bytes``, else both cross once (streamed row by row). Graph boundaries
(the image read by ``quantize_input``, the logits written by the last layer)
always cross the interface.

Simplification: a tensor produced by a resident layer and consumed by a
spilled one is charged an off-chip read without a matching write (at most
that tensor's size too much); inter-layer fusion beyond ``fused_into`` is
not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import dataflows
from .dataflows import GemmShape

__all__ = ["OffchipTraffic", "gemm_offchip", "eltwise_offchip", "min_gemm_buffer"]

@dataclass(frozen=True)
class OffchipTraffic:
    read: float
    write: float
    resident: bool
    blocks: int = 1
    blocked: str = ""  # "A" or "B" when spilled


def _order(g: GemmShape, x: str, usable: float, rows: int, cols: int):
    """(reads per product, blocks) when blocking operand ``x``; None if one line does not fit."""
    a_line, b_line = g.k * g.a_bits / 8, g.k * g.b_bits / 8
    a_h, b_h = g.m * a_line, g.n * b_line
    if x == "B":
        lines, s, x_line, y_line, y_bytes, x_bytes = g.n, min(g.m, rows), b_line, a_line, a_h, b_h
    else:
        lines, s, x_line, y_line, y_bytes, x_bytes = g.m, min(g.n, cols), a_line, b_line, b_h, a_h
    room = usable - s * y_line
    per_line = x_line + s * g.acc_bits / 8
    fit = int(room // per_line) if room > 0 else 0
    if fit < 1:
        return None
    blocks = -(-lines // fit)
    return x_bytes + blocks * y_bytes, blocks


def min_gemm_buffer(g: GemmShape, rows: int, cols: int, double_buffering: bool) -> float:
    """Smallest ``size_bytes`` for which some blocking order fits one line."""
    a_line, b_line = g.k * g.a_bits / 8, g.k * g.b_bits / 8
    sa, sb = min(g.m, rows), min(g.n, cols)
    need_b = sa * a_line + b_line + sa * g.acc_bits / 8
    need_a = sb * b_line + a_line + sb * g.acc_bits / 8
    return min(need_a, need_b) * (2 if double_buffering else 1)


def gemm_offchip(g: GemmShape, *, b_is_weight: bool, weight_bytes: float, buffer_bytes: int,
                 double_buffering: bool, rows: int, cols: int, dataflow: str,
                 input_offchip: bool = False, output_offchip: bool = False) -> OffchipTraffic | None:
    """Off-chip bytes of one GEMM layer by the module docstring's rules (None: does not fit)."""
    a = g.batch * g.m * g.k * g.a_bits / 8
    b = g.batch * g.k * g.n * g.b_bits / 8
    o = g.batch * g.m * g.n * g.out_bits / 8
    extra = max(weight_bytes - b, 0.0) if b_is_weight else 0.0  # bias, scales: read once
    acts = a + o + (0.0 if b_is_weight else b)
    strip = g.k * min(g.n, cols) * g.b_bits / 8 if b_is_weight else 0.0
    copies = 2 if double_buffering else 1
    if acts + copies * strip <= buffer_bytes:
        read = (b + extra if b_is_weight else 0.0) + (a if input_offchip else 0.0)
        return OffchipTraffic(read, o if output_offchip else 0.0, True)
    usable = buffer_bytes / copies
    natural = dataflows.get(dataflow).NATURAL_BLOCK
    best = None
    for x in (natural, "A" if natural == "B" else "B"):
        r = _order(g, x, usable, rows, cols)
        if r is not None and (best is None or r[0] < best[1][0]):
            best = (x, r)
    if best is None:
        return None
    x, (reads, blocks) = best
    return OffchipTraffic(g.batch * reads + extra, o, False, blocks, x)


def eltwise_offchip(in_bytes: float, out_bytes: float, buffer_bytes: int, *,
                    input_offchip: bool = False, output_offchip: bool = False) -> OffchipTraffic:
    """Off-chip bytes of an element-wise / row-wise layer."""
    if in_bytes + out_bytes <= buffer_bytes:
        return OffchipTraffic(in_bytes if input_offchip else 0.0,
                              out_bytes if output_offchip else 0.0, True)
    return OffchipTraffic(in_bytes, out_bytes, False)
