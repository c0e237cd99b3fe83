"""Structural checks of a loaded `QuantizedGraph`'s integer params, before any kernel sees them.

A ``.npz`` whose members were replaced (and a vector-set manifest resealed)
loads fine: ``np.load`` checks nothing about meaning. Without these checks an
empty member, a float member where codes belong, or a weight matrix of
another shape reaches ``torch._int_mm`` or a numba kernel (issue 18).

`check_params` compares the frozen params of every op with the float graph
it was frozen from: a linear's (or head's) weight codes exactly int8 of the
float weight's shape ``[n, k]``, its per-channel vectors ``[n]``; a
LayerNorm's vectors ``[d]``; constant token / position codes the shape of
their float values; integers where the kernels expect integers, finite
floats, and every multiplier and shift inside its documented range
(``0 <= shift <= 62``, ``0 <= mult < 2**31``, `reference.quantizers.dyadic`).
Other params (softmax, GELU, requantizers, split parts, sums, exits) are
checked for numeric leaves and the same ranges. Errors name the npz member
(``params.<op>.<field>``). A leaf module: `simulator.qgraph` calls it from
`QuantizedGraph.load`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from simulator.errors import InputError

__all__ = ["check_params"]

_SHIFT_FIELDS = ("out_shift", "shift", "in_shift", "res_shift")
_MULT_FIELDS = ("out_mult", "mult", "in_mult", "res_mult")
_MAX_SHIFT, _MAX_MULT = 62, 1 << 31


def _array(got, kind: str, shape, where: str, path) -> None:
    if not isinstance(got, np.ndarray):
        raise InputError(f"{path}: {where}: expected an array, got {type(got).__name__}")
    if shape is not None and got.shape != tuple(shape):
        raise InputError(f"{path}: {where}: expected shape {list(shape)}, got {list(got.shape)}")
    if kind == "int8" and got.dtype != np.int8:
        raise InputError(f"{path}: {where}: expected int8 codes, got {got.dtype}")
    if got.dtype.kind not in ("f" if kind == "float" else "iu"):
        raise InputError(f"{path}: {where}: expected {'a float' if kind == 'float' else 'an integer'} dtype, "
                         f"got {got.dtype}")
    if kind == "float" and got.size and not np.isfinite(got).all():
        raise InputError(f"{path}: {where}: expected finite values")


def _leaves(node, where: str, path) -> None:
    """Numeric leaves only; multipliers and shifts in range."""
    if isinstance(node, np.ndarray):
        if node.dtype.kind not in "iuf":
            raise InputError(f"{path}: {where}: expected a numeric array, got {node.dtype}")
    elif dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            _leaves(value, f"{where}.{f.name}", path)
            if value is not None and (f.name in _SHIFT_FIELDS or f.name in _MULT_FIELDS):
                hi = _MAX_SHIFT if f.name in _SHIFT_FIELDS else _MAX_MULT - 1
                arr = np.asarray(value)
                if arr.size and (arr.dtype.kind not in "iu" or int(arr.min()) < 0 or int(arr.max()) > hi):
                    raise InputError(f"{path}: {where}.{f.name}: expected integers in [0, {hi}]")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _leaves(v, f"{where}.{i}", path)
    elif isinstance(node, dict):
        for k, v in node.items():
            _leaves(v, f"{where}.{k}", path)
    elif node is not None and not isinstance(node, (int, float, str, np.integer, np.floating)):
        raise InputError(f"{path}: {where}: expected a number, got {type(node).__name__}")


def check_params(graph, params, path) -> None:
    """`InputError` naming the first param of ``params`` (op name -> frozen params) whose shape, dtype
    or range the kernels cannot take; ``graph`` is the float `simulator.ir.Graph` they were frozen from."""
    for op in graph.ops:
        if op.name not in params:
            continue
        p, fp, where = params[op.name], graph.params.get(op.name, {}), f"params.{op.name}"
        kind = type(p).__name__
        if op.kind in ("linear", "head"):
            if kind != "Linear":
                raise InputError(f"{path}: {where}: expected a Linear, got {kind}")
            n, k = np.shape(fp["weight"])
            _array(p.w_q, "int8", (n, k), f"{where}.w_q", path)
            for name, typ in (("bias_q", "int"), ("out_mult", "int"), ("out_shift", "int"),
                              ("w_scale", "float"), ("out_scale", "float")):
                _array(getattr(p, name), typ, (n,), f"{where}.{name}", path)
        elif op.kind == "layer_norm" and kind == "LayerNormQ":
            d = np.shape(fp["weight"])[0]
            for name, typ in (("gamma_mult", "int"), ("beta_q", "int"), ("gamma", "float"), ("beta", "float")):
                _array(getattr(p, name), typ, (d,), f"{where}.{name}", path)
            if p.channel_shift is not None:
                _array(p.channel_shift, "int", (d,), f"{where}.channel_shift", path)
        elif op.kind in ("token_concat", "add_const") and kind == "ConstCodes":
            _array(p.codes, "int", np.shape(fp["tokens" if op.kind == "token_concat" else "value"]),
                   f"{where}.codes", path)
        _leaves(p, where, path)
