"""The quantized graph: a lowered `simulator.ir.Graph` + a quantizer per tensor
+ the frozen integer parameters of every op. Plain numpy, never mutated,
saved to one versioned ``.npz`` (format_version 2).

Issue 13: the only frozen model format (every recipe, the CLI, golden
vectors). The old per-model ``QuantizedViT`` (format_version 1) was removed
with the hand-written walks; `QuantizedGraph.load` names that version
(`LegacyFormatError`) and checks every op's integer params before any kernel
sees them (`simulator.qgraph_check`).

Quantizer slot (`Quantizer.kind`), one per tensor that holds integers:

* ``static``: codes ``q`` of ``bits`` (signed or not) with ``value = q * scale``;
  ``scale`` a float (per tensor) or a float64 vector over the last axis (the
  qkv linear's output, whose parts q, k, v have their own scales).
* ``fixed_point``: a Q``frac_bits`` value (the Q12 input of the activation
  units), saturated to ``+-(2**(bits-1) - 1)``.
* ``accumulator``: an int32 GEMM accumulator at ``scale`` (``q k^T`` before
  the integer softmax; per channel for a linear read by a ``split``).
* ``two_scaled``: TSPTQ-ViT V-2SF words (`simulator.two_scaled`): flag bit +
  ``(bits-1)``-bit field, fine ``scale``, coarse ``scale * 2**ratio_shift``;
  ``signed`` = signed fine region (activations) or not (softmax). Words are in
  ``[0, 2**bits - 1]``; the reading GEMM decodes them to operands at ``scale``
  of magnitude at most `max_abs` (``b - 1 + r`` bits).
* ``grouped``: IGQ-ViT codes of ``bits``, per image each channel (or row,
  ``rows``) in the finest group ``g`` that holds its range, value ``q *
  scale * 2**-exps[g]`` (`simulator.igq_graph`; the executors record the
  group maps as ``<tensor>.groups``).

* ``predicted`` (ScalePredictor): codes like ``static`` at a per-image scale
  ``scale * 2**(d / 2**15)``, ``d`` predicted from a statistic of ``predictor.source``
  (`PredictedScale`; executed by `simulator.predicted_graph`).

* ``log2`` (static recipe, ``softmax: {quantizer: log2}``): FQ-ViT log2 codes ``c`` of
  ``bits`` (top code = zero) written by a softmax; the reading ``attn @ V`` decodes them to
  ``2**(S - c)`` at ``scale = 2**-S``, ``S = 2**bits - 2`` (`simulator.softmax_codes`).

Exits (APQ) are the next mechanism to port; a new kind is a new value of this
field with its own fields and kernels (docs/graph.md, "Adding a mechanism").

Per-op parameters reuse the frozen dataclasses of `simulator.qvit`
(`Linear`, `LayerNormQ`, `SoftmaxQ`, `Requant`, `GeluQ`) plus `ConstCodes`
(class/register tokens, position embedding), `ChannelRequant` (the parts
of a ``split``) and `RescaleSum` (``add``, ``mean``); ops without parameters (views, pooling) have none.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from simulator import ir
from simulator.errors import InputError
from simulator.graph_exits import ExitQ
from simulator.qvit import GeluQ, LayerNormQ, Linear, Requant, SoftmaxQ, _flatten, npz_tree_writer, read_npz_tree
from simulator.qvit import _unflatten as _unflatten_tree
from simulator.two_scaled import operand_max
from simulator.windows import WindowBiasQ

__all__ = ["LegacyFormatError", "Quantizer", "PredictedScale", "ConstCodes", "ChannelRequant", "RescaleSum", "QuantizedGraph", "FORMAT_VERSION", "QUANTIZER_KINDS"]

FORMAT_VERSION = 2
QUANTIZER_KINDS = ("static", "fixed_point", "accumulator", "two_scaled", "grouped", "predicted", "log2")


@dataclass(frozen=True)
class Quantizer:
    """How one tensor's integers map to real values (see the module docstring)."""
    kind: str
    scale: float | np.ndarray
    bits: int
    signed: bool = True
    ratio_shift: int = 0          # two_scaled: coarse scale = scale * 2**ratio_shift
    exps: tuple | None = None     # grouped (IGQ-ViT): group g at ``scale * 2**-exps[g]``, see simulator.igq_graph
    rows: bool = False            # grouped: rows grouped over the last axis (softmax), else channels over tokens
    predictor: "PredictedScale | None" = None     # kind "predicted" only

    def __post_init__(self):
        if self.kind not in QUANTIZER_KINDS:
            raise ValueError(f"quantizer kind {self.kind!r} is not one of {QUANTIZER_KINDS}")
        if (self.kind == "predicted") != (self.predictor is not None):
            raise ValueError("a predictor is given exactly for kind 'predicted'")

    @property
    def lo(self) -> int:
        if self.kind == "fixed_point":
            return -self.hi                   # symmetric: +-(2**(bits-1) - 1)
        if self.kind in ("two_scaled", "log2"):
            return 0                          # words: flag bit + field; log2 codes
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        if self.kind in ("two_scaled", "log2"):
            return (1 << self.bits) - 1
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def max_abs(self) -> int:
        """Largest magnitude a value can have (the GEMM backends' exactness bound)."""
        if self.kind == "two_scaled":         # of the decoded operand, not of the word
            return operand_max(self.bits, self.ratio_shift, int(self.signed))
        if self.kind == "log2":               # of the decoded operand 2**(S - c), S = 2**bits - 2
            return 1 << ((1 << self.bits) - 2)
        return max(-self.lo, self.hi)


@dataclass(frozen=True)
class PredictedScale:
    """ScalePredictor (`simulator.scale_predictor`): the per-image scale is ``scale * 2**(d / 2**15)``,
    ``d = horner_log2(normalise_statistic(S, center, norm_shift), *coeffs)`` with ``S`` the
    ``permille``-th order statistic of ``|codes of source|``; ``coeffs`` int64 Q15 ``[4]`` (per
    tensor) or ``[C, 4]`` (per channel on the last axis: the qkv output)."""
    source: str
    permille: int
    center: int
    norm_shift: int
    degree: int
    coeffs: np.ndarray


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


_CLASSES = {c.__name__: c for c in (Quantizer, PredictedScale, ConstCodes, ChannelRequant, RescaleSum, Linear,
                                    LayerNormQ, SoftmaxQ, Requant, GeluQ, ExitQ, WindowBiasQ)}
_OPS = {c.__name__: c for c in (ir.Patchify, ir.Linear, ir.Head, ir.LayerNorm, ir.TokenConcat, ir.AddConst,
                                ir.Split, ir.SplitHeads, ir.MergeHeads, ir.MatMul, ir.Softmax, ir.Activation,
                                ir.Add, ir.Pool, ir.Mean, ir.Exit, ir.GatherTokens, ir.WindowBias)}


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
    def save(self, path: str | os.PathLike, label: str | None = None) -> None:
        """One ``.npz`` (arrays + a JSON header), written atomically with the user's umask
        (`simulator.atomic_files`); an OS error is an `InputError` naming ``label`` (default: the path)."""
        from simulator.atomic_files import write_bytes

        write_bytes(os.fspath(path), self.npz_writer(), label)

    def npz_writer(self):
        """A function writing this graph's ``.npz`` into a binary file (for `atomic_files.Batch`)."""
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
        return npz_tree_writer({"format_version": FORMAT_VERSION, "kind": "QuantizedGraph", "tree": tree}, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QuantizedGraph":
        """Read a file written by `save`; anything else is an `InputError` naming the file."""
        path = os.fspath(path)
        header, arrays = read_npz_tree(path, "quantized graph")
        version = header.get("format_version") if isinstance(header, dict) else None
        if version == 1:
            raise LegacyFormatError(f"{path}: format_version 1 is the old per-model QuantizedViT format, written "
                             f"before the legacy walks were removed; expected format_version {FORMAT_VERSION} "
                             "(a QuantizedGraph): quantize the model again with this version")
        if version != FORMAT_VERSION:
            raise InputError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}")
        try:
            t = header["tree"]
            tg = t["graph"]
            params = _unflatten(tg["params"], arrays)
            graph = ir.Graph(ops=tuple(_op_from_tree(o) for o in tg["ops"]), input=tg["input"],
                             outputs=tuple(tg["outputs"]), params=params, image_size=tuple(tg["image_size"]),
                             in_chans=int(tg["in_chans"]))
            qg = cls(graph=graph, quantizers=_unflatten(t["quantizers"], arrays),
                     params=_unflatten(t["params"], arrays), meta=t["meta"])
        except (KeyError, TypeError, AttributeError, ValueError, ir.GraphError) as e:
            raise InputError(f"{path}: incomplete quantized graph ({type(e).__name__}: {e})") from None
        from simulator.qgraph_check import check_params

        check_params(qg.graph, qg.params, path)     # shapes, dtypes and ranges before any kernel runs
        return qg


class LegacyFormatError(InputError):
    """A format_version 1 file: the old per-model `QuantizedViT`, no longer read."""


def _op_tree(op: ir.Op) -> dict:
    d = {f.name: getattr(op, f.name) for f in dataclasses.fields(op)}
    return {"__op__": type(op).__name__,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}


def _op_from_tree(node: dict) -> ir.Op:
    cls = _OPS[node["__op__"]]
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in node.items() if k != "__op__"}
    return cls(**kw)


def _unflatten(node, arrays: dict):
    return _unflatten_tree(node, arrays, _CLASSES)
