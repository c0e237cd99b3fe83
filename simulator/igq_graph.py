"""IGQ-ViT grouped quantizers (kind ``grouped``) on the graph: the numba op set's
grouped boundaries and the trace records of the grouping overhead.

Formulas are those of `simulator.igq` (IGQ-ViT, Moon et al., CVPR 2024,
Sec. 3.2, with power-of-two group scales; docs/recipes/igq.md):

* a grouped tensor holds codes of ``bits`` where, per image, channel ``c``
  (reduced over the tokens, axis -2) or row ``r`` (``rows``: reduced over the
  last axis) is in group ``g`` with scale ``scale * 2**-exps[g]``
  (``exps`` strictly decreasing, last 0: ``scale`` is the coarsest group's);
* its producer computes the wide integer value ``u`` it would round anyway and
  writes ``code = saturate(requantize(u, mult, base - exps[g]), lo, hi)`` with
  ``g`` = the finest group whose map keeps the channel's/row's extremes
  unclipped (`simulator.igq.assign_group`, integer comparisons). ``(mult,
  base)`` is the producer's own static output map (`group_map`):

  ===============  ================================  =====================================
  producer         wide ``u``                        ``(mult, base)``
  ===============  ================================  =====================================
  ``layer_norm``   ``n_c G_c + B_c``                 ``(1, out_shift)``
  ``softmax``      ``e floor(2**62 / sum e)``        ``(1, 62 - out_bits)``
  ``activation``   the unit's Q12 output             ``(out_mult, out_shift)``
  ``matmul``       ``requantize(acc, M, k - e_0)``   ``(1, e_0)`` (wide at the finest scale)
  ===============  ================================  =====================================

* a linear reading channel groups computes one GEMM on ``code << (e_0 -
  exps[g(c)])`` (= the per-group partial sums combined by shifts) with the
  weights frozen for the input scale ``scale * 2**-e_0``;
* a matmul reading row groups (``attn @ v``) shifts row ``r``'s
  requantization by ``exps[g(r)]`` (no combine: a row's scale only changes
  its multiplier).
"""

from __future__ import annotations

from math import prod

import numpy as np

from simulator.fixedpoint import saturate as np_saturate
from simulator.igq import GroupQuantizer, _assign, _combine
from simulator.int_nonlinear import SOFTMAX_RECIP_BITS
from simulator.kernels.grouped import (gelu_wide, group_quantize, layernorm_wide, quick_gelu_wide, requant_rows,
                                       softmax_wide)
from simulator.trace import LayerRecord

__all__ = ["group_map", "group_quantizer", "grouped_output", "grouped_operand", "grouped_matmul", "row_shifts",
           "matmul_rows", "wide_value", "group_records", "GROUPED_PRODUCERS"]

GROUPED_PRODUCERS = ("layer_norm", "softmax", "activation", "matmul")


def group_map(op, params, qz) -> tuple[int, int]:
    """``(mult, base)`` of the grouped output of ``op`` (table in the module docstring)."""
    k = op.kind
    if qz.rows != (k == "softmax"):
        raise ValueError(f"{op.name}: {k} writes {'channel' if k != 'softmax' else 'row'} groups, "
                         f"the quantizer asks for {'rows' if qz.rows else 'channels'}")
    if k == "layer_norm":
        return 1, int(params.out_shift)
    if k == "softmax":
        return 1, SOFTMAX_RECIP_BITS - int(params.out_bits)
    if k == "activation":
        return int(params.out_mult), int(params.out_shift)
    if k == "matmul":
        return 1, int(qz.exps[0])
    raise ValueError(f"{op.name}: a {k} op cannot write grouped codes (only {GROUPED_PRODUCERS})")


def group_quantizer(op, params, qz) -> GroupQuantizer:
    """The `simulator.igq.GroupQuantizer` of ``op``'s grouped output ``qz``."""
    mult, base = group_map(op, params, qz)
    return GroupQuantizer(np.asarray(qz.exps, dtype=np.int64), mult, base, qz.lo, qz.hi, float(qz.scale))


def wide_value(op, params, x, row_shift=None):
    """The producer's int64 intermediate before its final rounding (module docstring)."""
    k = op.kind
    if k == "layer_norm":
        return layernorm_wide(np.ascontiguousarray(x), params)
    if k == "softmax":
        return softmax_wide(np.ascontiguousarray(x), params)
    if k == "activation":
        h = np.ascontiguousarray(x)
        return quick_gelu_wide(h) if op.function == "quick_gelu" else gelu_wide(h)
    raise ValueError(f"{op.name}: no wide value for {k}")


def grouped_output(op, params, qz, u, out_dtype):
    """Codes and group indices of the wide ``u`` under ``qz`` (channels: indices [..., C]; rows: [..., R])."""
    return group_quantize(u, group_quantizer(op, params, qz), out_dtype, rows=qz.rows)


def row_shifts(rq_shift: int, a_qz, a_groups, out_qz):
    """Per-row shift of a matmul's requantization: ``k + exps_a[g(r)] - e_0(out)``."""
    s = np.full(a_groups.shape if a_groups is not None else (), int(rq_shift), dtype=np.int64)
    if a_groups is not None:
        s = s + np.asarray(a_qz.exps, dtype=np.int64)[a_groups]
    if out_qz.kind == "grouped":
        s = s - int(out_qz.exps[0])
    return s


def matmul_rows(acc, mult: int, shifts) -> np.ndarray:
    """``requantize(acc[..., r, :], mult, shifts[..., r])``, unsaturated int64."""
    return requant_rows(np.ascontiguousarray(acc), mult, np.broadcast_to(shifts, acc.shape[:-1]))


def grouped_matmul(op, rq, qa, qb, qz, a_groups, acc):
    """Output stage of ``a @ b`` with row-grouped ``a`` and/or a grouped (channel) output:
    ``u = requantize(acc[..., r, :], M, row_shifts)``; returns ``(u, None)`` for a grouped
    output (the caller groups it), else ``(None, saturate(u, lo, hi))``."""
    if (qb.kind == "grouped" or (qa.kind == "grouped" and not qa.rows) or qz.kind == "accumulator"
            or (qz.kind == "grouped" and qz.rows)):
        raise ValueError(f"{op.name}: grouped matmul operands/outputs supported: row-grouped a, "
                         f"channel-grouped output")
    u = matmul_rows(acc, rq.mult, row_shifts(rq.shift, qa, a_groups if qa.kind == "grouped" else None, qz))
    return (u, None) if qz.kind == "grouped" else (None, np_saturate(u, qz.lo, qz.hi))


def grouped_operand(x, groups, qz):
    """GEMM operand of channel-grouped codes: ``x << (e_0 - exps[g(c)])``, and its magnitude bound."""
    exps = np.asarray(qz.exps, dtype=np.int64)
    sh = (exps[0] - exps)[groups]                                   # [B, C]
    if x.ndim == 3:
        sh = sh[:, None, :]
    return x.astype(np.int64) << sh, qz.max_abs << int(exps[0])


# --- trace ------------------------------------------------------------------------------------
def _site(graph, t: str) -> str:
    """The boundary a grouped tensor is written as (``attn.av`` -> ``attn_out`` through merge_heads)."""
    cons = [op for op in graph.ops if t in op.inputs]
    return cons[0].outputs[0] if len(cons) == 1 and cons[0].kind == "merge_heads" else t


def group_records(qg, op, ins, outs, recs: list[LayerRecord]) -> list[LayerRecord]:
    """``recs`` of ``op`` plus the grouping records of `simulator.igq` (only where G > 1):
    ``<tensor>.group_assign`` after the producer of a grouped tensor, ``<linear>.group_combine``
    right after a linear that reads channel groups."""
    q = qg.quantizers
    out = list(recs)
    qi = q.get(op.inputs[0]) if op.inputs else None
    if op.kind == "linear" and qi is not None and qi.kind == "grouped" and len(qi.exps) > 1 and out:
        r = out[0]
        out.insert(1, _combine(r.name + ".group_combine", r.m, r.n, len(qi.exps)))
    for t, shape in zip(op.outputs, outs):
        qz = q.get(t)
        if op.kind not in GROUPED_PRODUCERS or qz is None or qz.kind != "grouped" or len(qz.exps) <= 1:
            continue
        rows = prod(shape[1:-1]) if qz.rows else prod(shape[1:-2]) * shape[-1]
        out.append(_assign(_site(qg.graph, t) + ".group_assign", prod(shape[1:]), rows, len(qz.exps)))
    return out
