"""Frozen integer parameters of the graph's ops, and the one ``.npz`` file layout.

`Linear`, `LayerNormQ`, `SoftmaxQ`, `Requant` and `GeluQ` are the frozen
params of the ops of a `simulator.qgraph.QuantizedGraph` (plain numpy
integer codes, dyadic multipliers ``(mult, shift)`` and the float scales
kept to dequantize outputs and for the fake-quant executor's
float-nonlinear mode). `npz_tree_writer` / `read_npz_tree` / `_flatten` /
`_unflatten` are the file layout (arrays + a JSON ``__header__``) that
`QuantizedGraph.save` writes.

The per-model ``QuantizedViT`` (format_version 1) that used to live here
was removed with the hand-written walks (issue 13); `QuantizedGraph.load`
names that version when it meets such a file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields

import numpy as np

from simulator.errors import InputError

__all__ = ["Linear", "LayerNormQ", "SoftmaxQ", "Requant", "GeluQ", "npz_tree_writer", "read_npz_tree"]


@dataclass(frozen=True)
class Linear:
    """``out = saturate(requantize(x @ w_q.T + bias_q, out_mult, out_shift) [+ residual])``.

    ``w_q`` int8 [n, k] symmetric per-output-channel codes at ``w_scale``;
    ``bias_q`` int64 [n] at the accumulator scale ``in_scale * w_scale``;
    ``out_mult``/``out_shift`` int64 [n] per output channel. ``out_bits`` is
    the signed output code width (0 means the output is a Q12 fixed-point
    value for the GELU unit). When ``res_mult`` > 0 the residual input is
    requantized with ``(res_mult, res_shift)`` and added before saturation.
    """

    w_q: np.ndarray
    bias_q: np.ndarray
    w_scale: np.ndarray
    w_bits: int
    in_bits: int
    in_scale: float
    out_mult: np.ndarray
    out_shift: np.ndarray
    out_bits: int
    out_scale: np.ndarray
    res_mult: int = 0
    res_shift: int = 0
    res_bits: int = 0


@dataclass(frozen=True)
class LayerNormQ:
    """Integer LayerNorm (see `simulator.int_nonlinear`): ``eps_q`` = eps*D**2/s_x**2."""

    eps_q: int
    gamma_mult: np.ndarray
    beta_q: np.ndarray
    out_shift: int
    in_bits: int
    in_scale: float
    out_bits: int
    out_scale: float
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    channel_shift: np.ndarray | None = None   # O-2SF: channel c's codes are at out_scale * 2**shift_c
                                              # (folded into gamma_mult/beta_q, gamma/beta)


@dataclass(frozen=True)
class SoftmaxQ:
    """Integer softmax of ``q k^T``: ``(in_mult, in_shift)`` maps the accumulator to
    ``(x - max) * log2(e)`` in Q15; output unsigned codes at ``2**-out_bits``."""

    in_mult: int
    in_shift: int
    in_scale: float
    out_bits: int
    fine_exp: int = 0       # V-2SF (`simulator.two_scaled`) when ratio_shift > 0:
    ratio_shift: int = 0    # fine scale 2**-fine_exp, coarse 2**-(fine_exp - ratio_shift)


@dataclass(frozen=True)
class Requant:
    """A plain dyadic requantization of an accumulator to signed ``out_bits`` codes."""

    mult: int
    shift: int
    out_bits: int
    out_scale: float


@dataclass(frozen=True)
class GeluQ:
    """GELU on the Q12 output of fc1, then ``(out_mult, out_shift)`` to signed codes.

    ``ratio_shift > 0``: two-scaled V-2SF words (`simulator.two_scaled`), the
    multiplier and ``out_scale`` being the fine ones, coarse = fine * 2**ratio_shift."""

    out_mult: int
    out_shift: int
    out_bits: int
    out_scale: float
    ratio_shift: int = 0


def npz_tree_writer(header: dict, arrays: dict):
    """A function writing ``arrays`` + the JSON ``header`` (as ``__header__``) into a binary file:
    the file layout of `simulator.qgraph.QuantizedGraph` (read by `read_npz_tree`)."""
    arrays = {**arrays, "__header__": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    return lambda f: np.savez(f, **arrays)


def read_npz_tree(path: str, what: str) -> tuple[object, dict]:
    """(JSON header, arrays) of a file written as arrays + ``__header__``
    (`simulator.qgraph.QuantizedGraph.save`); a missing or corrupt file is an `InputError`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(bytes(arrays.pop("__header__")).decode())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as e:  # zip/npz/json corruption of any kind
        raise InputError(f"{path}: not a {what} file ({type(e).__name__})") from None
    return header, arrays


_CLASSES = {c.__name__: c for c in (Linear, LayerNormQ, SoftmaxQ, Requant, GeluQ)}


def _flatten(obj, prefix: str, arrays: dict):
    """JSON tree of ``obj`` where every ndarray is replaced by a key into ``arrays``."""
    if isinstance(obj, np.ndarray):
        arrays[prefix] = obj
        return {"__array__": prefix}
    if dataclasses.is_dataclass(obj):
        return {"__class__": type(obj).__name__,
                **{f.name: _flatten(getattr(obj, f.name), f"{prefix}.{f.name}".lstrip("."), arrays)
                   for f in fields(obj)}}
    if isinstance(obj, (list, tuple)):
        kind = "__tuple__" if isinstance(obj, tuple) else "__list__"
        return {kind: [_flatten(v, f"{prefix}.{i}", arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        return {"__dict__": {k: _flatten(v, f"{prefix}.{k}", arrays) for k, v in obj.items()}}
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


def _unflatten(node, arrays: dict, classes: dict | None = None):
    """Inverse of `_flatten`: dataclasses are looked up by name in ``classes`` (default: this module's)."""
    classes = _CLASSES if classes is None else classes
    if isinstance(node, dict):
        if "__array__" in node:
            return arrays[node["__array__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, arrays, classes) for v in node["__tuple__"])
        if "__list__" in node:
            return [_unflatten(v, arrays, classes) for v in node["__list__"]]
        if "__dict__" in node:
            return {k: _unflatten(v, arrays, classes) for k, v in node["__dict__"].items()}
        cls = classes[node["__class__"]]
        return cls(**{k: _unflatten(v, arrays, classes) for k, v in node.items() if k != "__class__"})
    return node
