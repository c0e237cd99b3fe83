"""IGQ-ViT grouped activation quantizers: frozen parameters, the integer
group-assignment formula, and the trace records of the grouping overhead.

IGQ-ViT (Moon, Kim, Cheon, Ham, CVPR 2024, "Instance-Aware Group Quantization
for Vision Transformers", Sec. 3.2) splits, *for every input instance*, the
channels of each linear layer's input into G groups of similar range, each
group with its own quantizer, and groups the rows (query tokens) of every
softmax attention map the same way. We follow that, with two hardware-minded
choices of our own (documented in docs/recipes/igq.md):

* **Power-of-two group scales.** Group g has scale ``scale * 2**-exps[g]``
  with integer exponents ``exps[0] > exps[1] > ... > exps[G-1] = 0`` (finest
  first; the coarsest group is the static recipe's scale). The exponents are
  calibrated per layer and G (`reference.recipes.igq_graph`), not fixed.
* **Assignment = the finest group that does not clip.** IGQ-ViT assigns a
  channel to the group whose range is nearest the channel's per-instance
  [min, max]; with symmetric quantizers we take the finest group whose code
  range holds both the channel's max and min after rounding, else the
  coarsest (which then clips, as the static recipe would). Computed on the
  *wide integer intermediate* that exists before final quantization (the
  LayerNorm's ``n*G + B``, the GELU unit's Q12 output, the attention-times-V
  accumulator, softmax's ``e * floor(2**62/sum e)``) by integer comparisons.

A grouped boundary maps the wide intermediate ``u`` to codes with the
group's dyadic map ``saturate(requantize(u, mult, shift - exps[g]), lo, hi)``;
with G = 1 (``exps = [0]``) this is exactly the static recipe's output stage.

GEMM with per-channel group scales (per-group partial sums): the consumer
linear layer's input scale is the finest group's, ``scale * 2**-exps[0]``;
the array computes one int32 partial sum per group over that group's
channels (channels permuted by group index), and the output stage combines
them as ``acc = sum_g acc_g << (exps[0] - exps[g])`` before the usual bias,
dyadic requantization and saturation. Arithmetically this equals one GEMM on
the operand ``code << (exps[0] - exps[g(c)])`` (`operand_shift`), which is
how both executors evaluate it (exactly; the sum saturates to int32 like any
accumulator, counted in the trace). Softmax row groups need no combine: a
row's scale only changes that row's requantization multiplier after attn@V.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.fixedpoint import requantize, saturate
from simulator.trace import LayerRecord

__all__ = ["GroupQuantizer", "fits_group", "assign_group", "group_code", "index_bits",
           "overhead_bops", "SITES", "WIDE_BITS"]

#: grouped boundaries of one block, in execution order (consumer in brackets):
#: norm1 [qkv], attn rows [attn@V], attn_out [proj], norm2 [fc1], gelu [fc2]
SITES = ("norm1", "attn", "attn_out", "norm2", "gelu")
WIDE_BITS = 32   # storage width counted for the buffered wide intermediate


@dataclass(frozen=True)
class GroupQuantizer:
    """One grouped boundary: ``code_g(u) = saturate(requantize(u, mult, shift - exps[g]), lo, hi)``.

    ``exps`` int64 [G], strictly decreasing, ``exps[-1] == 0``; ``scale`` is
    the coarsest group's real scale (group g: ``scale * 2**-exps[g]``).
    """

    exps: np.ndarray
    mult: int
    shift: int
    lo: int
    hi: int
    scale: float

    @property
    def groups(self) -> int:
        return int(len(self.exps))

    @property
    def exps_tuple(self) -> tuple:
        return tuple(int(e) for e in self.exps)


# --- element formulas (operators only: Python ints, numpy, torch, numba) ------------------------
def fits_group(umax, umin, mult, shift, lo, hi):
    """True where both extremes of a channel stay inside ``[lo, hi]`` after the group's map."""
    return (requantize(umax, mult, shift) <= hi) & (requantize(umin, mult, shift) >= lo)


def assign_group(umax, umin, mult, base_shift, exps, lo, hi):
    """Index of the finest group whose map keeps ``[umin, umax]`` unclipped, else ``len(exps) - 1``.

    Groups are tried coarse to fine; each fitting group overwrites the
    index, so the finest fitting one remains (no assumption of monotonicity).
    """
    n = len(exps)
    g = umax * 0 + (n - 1)
    for j in range(n - 2, -1, -1):
        fit = fits_group(umax, umin, mult, base_shift - exps[j], lo, hi)
        g = g + (j - g) * fit
    return g


def group_code(u, mult, shift, lo, hi):
    """The code of the wide value ``u`` under one group's map (``shift`` = base - exps[g])."""
    return saturate(requantize(u, mult, shift), lo, hi)


def index_bits(groups: int) -> int:
    """Bits of one stored group index."""
    return max(int(groups) - 1, 0).bit_length()


# --- trace records and BOP-equivalents ---------------------------------------------------------
def _assign(name: str, elements: int, rows: int, groups: int) -> LayerRecord:
    """Group assignment: running max/min over ``elements`` wide values read from the buffered
    intermediate, one index of `index_bits` written per grouped row/channel (``rows``)."""
    return LayerRecord(name=name, kind="group_assign", elements=elements, rows=rows,
                       in_bits=WIDE_BITS, out_bits=index_bits(groups))


def _combine(name: str, m: int, n: int, groups: int) -> LayerRecord:
    """Combining G per-group int32 partial sums: ``(G - 1)`` shift-adds per output on the requant unit."""
    return LayerRecord(name=name, kind="requantize", elements=m * n * (groups - 1), rows=m,
                       in_bits=WIDE_BITS, out_bits=0)


def overhead_bops(layers) -> int:
    """BOP-equivalents of the grouping overhead in a trace's layer list.

    Convention (ours; the paper counts the grouped GEMMs' BOPs): an integer
    compare or add of a b-bit value costs b bit-operations, like one b-bit
    adder. Group assignment keeps a running max and min per grouped row, so
    ``2 * elements * in_bits``; combining partial sums is one shift-add per
    extra group and output, ``elements * in_bits``. GEMM BOPs are unchanged
    by grouping (each partial sum is an a_bits x w_bits product).
    """
    total = 0
    for r in layers:
        if r.kind == "group_assign":
            total += 2 * r.elements * r.in_bits
        elif r.kind == "requantize" and r.name.endswith(".group_combine"):
            total += r.elements * r.in_bits
    return total
