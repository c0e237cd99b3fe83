"""IGQ-ViT grouped quantizers (kind ``grouped``) in the torch fake-quant op set.

The same formulas as the numba op set's `simulator.igq_graph` (table of
wide values and group maps there), evaluated on int64 tensors with the old
IGQ fake-quant functions (`reference.igq_fakequant`: the integer / float
LayerNorm, softmax and GELU stages, `group_quantize`, `group_quantize_float`),
so the grouped codes, group maps and GEMM operands equal the numba op set's.
``nonlinear="float"``: the float functions, grouped on real values between the
same frozen group scales (as the old executor's float-nonlinear mode).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from reference.igq_fakequant import _gelu, _layernorm, _softmax, group_quantize, group_quantize_float
from reference.tensor_primitives import quick_gelu_q12, requantize, saturate
from simulator.igq_graph import group_quantizer
from simulator.int_nonlinear import GELU_FRAC_BITS

__all__ = ["grouped_output", "grouped_matmul", "grouped_operand"]

_FLOAT_ACT = {"gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
              "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x)}


def _exps(qz) -> torch.Tensor:
    return torch.as_tensor(np.asarray(qz.exps, dtype=np.int64))


def grouped_output(op, params, qz, x, nonlinear: str):
    """``(codes, group indices)`` of a layer_norm / softmax / activation writing ``qz``."""
    gq = group_quantizer(op, params, qz)          # checks producer kind vs. rows
    ex = SimpleNamespace(nonlinear=nonlinear)
    if op.kind == "layer_norm":
        if nonlinear == "float":                  # the graph's float params are read-only; torch wants writable
            params = dataclasses.replace(params, gamma=np.array(params.gamma), beta=np.array(params.beta))
        return _layernorm(ex, params, gq, x.long())
    if op.kind == "softmax":
        return _softmax(ex, params, gq, x)
    if op.function in _FLOAT_ACT:                 # quick-GELU / tanh-GELU; erf-GELU below
        if nonlinear == "float":
            return group_quantize_float(_FLOAT_ACT[op.function](x.double() * 2.0 ** -GELU_FRAC_BITS), gq)
        if op.function == "quick_gelu":
            return group_quantize(quick_gelu_q12(x.long()), gq)
    return _gelu(ex, gq, x.long())


def grouped_matmul(op, rq, qa, qb, qz, a_groups, acc):
    """Torch twin of `simulator.igq_graph.grouped_matmul` -> ``(codes, group indices or None)``."""
    if (qb.kind == "grouped" or (qa.kind == "grouped" and not qa.rows) or qz.kind == "accumulator"
            or (qz.kind == "grouped" and qz.rows)):
        raise ValueError(f"{op.name}: grouped matmul operands/outputs supported: row-grouped a, "
                         f"channel-grouped output")
    shifts = torch.full(acc.shape[:-1], int(rq.shift), dtype=torch.long)
    if qa.kind == "grouped":
        shifts = shifts + _exps(qa)[a_groups]
    if qz.kind == "grouped":
        shifts = shifts - int(qz.exps[0])
    u = requantize(acc, rq.mult, shifts.unsqueeze(-1))
    if qz.kind == "grouped":
        return group_quantize(u, group_quantizer(op, rq, qz))
    return saturate(u, qz.lo, qz.hi), None


def grouped_operand(x, groups, qz):
    """GEMM operand ``x << (e_0 - exps[g(c)])`` of channel-grouped codes."""
    exps = _exps(qz)
    sh = (exps[0] - exps)[groups]
    return x.long() << (sh.unsqueeze(-2) if x.dim() == 3 else sh)
