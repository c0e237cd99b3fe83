"""The quantized graph: a lowered `simulator.ir.Graph` + a quantizer per tensor
+ the frozen integer parameters of every op. Plain numpy, never mutated,
saved to one versioned ``.npz`` (format_version 2).

Phase 2 of issue 13 (static recipe). It lives beside the old per-model
`simulator.qvit.QuantizedViT` (format_version 1), which tsptq / igq /
scalepredictor / apq and the CLI still use until every mechanism is ported.

Quantizer slot (`Quantizer.kind`), one per tensor that holds integers:

* ``static``: codes ``q`` of ``bits`` (signed or not) with ``value = q * scale``;
  ``scale`` a float (per tensor) or a float64 vector over the last axis (the
  qkv linear's output, whose parts q, k, v have their own scales).
* ``fixed_point``: a Q``frac_bits`` value (the Q12 input of the activation
  units), saturated to ``+-(2**(bits-1) - 1)``.
* ``accumulator``: an int32 GEMM accumulator at ``scale`` (``q k^T`` before
  the integer softmax; per channel for a linear read by a ``split``).

Later kinds (``two_scaled``, ``grouped``, ``predicted``) are new values of
this field with their own fields and kernels.

Per-op parameters reuse the frozen dataclasses of `simulator.qvit`
(`Linear`, `LayerNormQ`, `SoftmaxQ`, `Requant`, `GeluQ`) plus `ConstCodes`
(class/register tokens, position embedding), `ChannelRequant` (the parts
of a ``split``) and `RescaleSum` (``add``, ``mean``); ops without parameters (views, pooling) have none.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from simulator import ir
from simulator.errors import InputError
from simulator.graph_exits import ExitQ
from simulator.qvit import GeluQ, LayerNormQ, Linear, Requant, SoftmaxQ, _flatten

__all__ = ["Quantizer", "ConstCodes", "ChannelRequant", "RescaleSum", "QuantizedGraph", "FORMAT_VERSION", "QUANTIZER_KINDS"]

FORMAT_VERSION = 2
QUANTIZER_KINDS = ("static", "fixed_point", "accumulator")


@dataclass(frozen=True)
class Quantizer:
    """How one tensor's integers map to real values (see the module docstring)."""
    kind: str
    scale: float | np.ndarray
    bits: int
    signed: bool = True

    def __post_init__(self):
        if self.kind not in QUANTIZER_KINDS:
            raise ValueError(f"quantizer kind {self.kind!r} is not one of {QUANTIZER_KINDS}")

    @property
    def lo(self) -> int:
        if self.kind == "fixed_point":
            return -self.hi                   # symmetric: +-(2**(bits-1) - 1)
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def max_abs(self) -> int:
        """Largest magnitude a value can have (the GEMM backends' exactness bound)."""
        return max(-self.lo, self.hi)


@dataclass(frozen=True)
class ConstCodes:
    """Constant codes (prefix tokens [P, D], position embedding [T, D]) at the output's scale."""
    codes: np.ndarray


@dataclass(frozen=True)
class ChannelRequant:
    """``out[..., c] = saturate(requantize(acc[..., c], mult[c], shift[c]), lo, hi)``: one part of a split."""
    mult: np.ndarray
    shift: np.ndarray


@dataclass(frozen=True)
class RescaleSum:
    """``out = saturate(sum_i requantize(x_i, mult[i], shift[i]), lo, hi)``."""
    mult: np.ndarray
    shift: np.ndarray


_CLASSES = {c.__name__: c for c in (Quantizer, ConstCodes, ChannelRequant, RescaleSum, Linear, LayerNormQ, SoftmaxQ, Requant,
                                    GeluQ, ExitQ)}
_OPS = {c.__name__: c for c in (ir.Patchify, ir.Linear, ir.Head, ir.LayerNorm, ir.TokenConcat, ir.AddConst,
                                ir.Split, ir.SplitHeads, ir.MergeHeads, ir.MatMul, ir.Softmax, ir.Activation,
                                ir.Add, ir.Pool, ir.Mean, ir.Exit)}


@dataclass(frozen=True)
class QuantizedGraph:
    """``graph`` (float params kept for reference), ``quantizers[tensor]``,
    ``params[op name]`` (frozen integer params) and ``meta`` (recipe, bits,
    model name, calibration facts; JSON-ready)."""
    graph: ir.Graph
    quantizers: Mapping[str, Quantizer]
    params: Mapping[str, object]
    meta: dict = field(default_factory=dict)

    @property
    def output(self) -> str:
        return self.graph.outputs[0]

    def output_scale(self) -> float:
        return float(np.asarray(self.quantizers[self.output].scale))

    # --- persistence ---------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """One ``.npz`` (arrays + a JSON header), written atomically (temp file + rename)."""
        arrays: dict[str, np.ndarray] = {}
        g = self.graph
        tree = {
            "graph": {"ops": [_op_tree(o) for o in g.ops], "input": g.input, "outputs": list(g.outputs),
                      "image_size": list(g.image_size), "in_chans": g.in_chans,
                      "params": _flatten({k: dict(v) for k, v in g.params.items()}, "graph", arrays)},
            "quantizers": _flatten(dict(self.quantizers), "quantizers", arrays),
            "params": _flatten(dict(self.params), "params", arrays),
            "meta": self.meta,
        }
        header = {"format_version": FORMAT_VERSION, "kind": "QuantizedGraph", "tree": tree}
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        path = os.fspath(path)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QuantizedGraph":
        """Read a file written by `save`; anything else is an `InputError` naming the file."""
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            header = json.loads(bytes(arrays.pop("__header__")).decode())
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except Exception as e:  # zip/npz/json corruption of any kind
            raise InputError(f"{path}: not a quantized graph file ({type(e).__name__})") from None
        version = header.get("format_version") if isinstance(header, dict) else None
        if version == 1:
            raise InputError(f"{path}: format_version 1 is the old per-model QuantizedViT format, expected "
                             f"format_version {FORMAT_VERSION} (a quantized graph); load it with "
                             f"simulator.qvit.QuantizedViT.load or quantize the model again")
        if version != FORMAT_VERSION:
            raise InputError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}")
        try:
            t = header["tree"]
            tg = t["graph"]
            params = _unflatten(tg["params"], arrays)
            graph = ir.Graph(ops=tuple(_op_from_tree(o) for o in tg["ops"]), input=tg["input"],
                             outputs=tuple(tg["outputs"]), params=params, image_size=tuple(tg["image_size"]),
                             in_chans=int(tg["in_chans"]))
            return cls(graph=graph, quantizers=_unflatten(t["quantizers"], arrays),
                       params=_unflatten(t["params"], arrays), meta=t["meta"])
        except (KeyError, TypeError, AttributeError, ValueError, ir.GraphError) as e:
            raise InputError(f"{path}: incomplete quantized graph ({type(e).__name__}: {e})") from None


def _op_tree(op: ir.Op) -> dict:
    d = {f.name: getattr(op, f.name) for f in dataclasses.fields(op)}
    return {"__op__": type(op).__name__,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}


def _op_from_tree(node: dict) -> ir.Op:
    cls = _OPS[node["__op__"]]
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in node.items() if k != "__op__"}
    return cls(**kw)


def _unflatten(node, arrays: dict):
    if isinstance(node, dict):
        if "__array__" in node:
            return arrays[node["__array__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, arrays) for v in node["__tuple__"])
        if "__list__" in node:
            return [_unflatten(v, arrays) for v in node["__list__"]]
        if "__dict__" in node:
            return {k: _unflatten(v, arrays) for k, v in node["__dict__"].items()}
        cls = _CLASSES[node["__class__"]]
        return cls(**{k: _unflatten(v, arrays) for k, v in node.items() if k != "__class__"})
    return node
