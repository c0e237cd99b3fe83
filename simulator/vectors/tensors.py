"""Which tensors a vector set holds, with their widths, and the per-layer view.

Collected generically from the `QuantizedGraph`, so that recipes and graph
shapes add tensors without touching this module:

* ``images`` -- the float input images (role ``image``, IEEE-754 float32);
* every tensor in ``GraphIntegerExecutor.run(...).codes`` (role ``activation``),
  named as the graph names it (``input``, ``x0``, ``blocks.0.q``,
  ``blocks.0.attn.qkv``, ...; IGQ group maps ``<tensor>.groups``);
* every per-image array in ``trace.extras`` (role ``trace``: exit decisions,
  predicted scales of dynamic recipes) under ``trace.<key>``;
* every array leaf and every integer scalar leaf of the frozen integer
  params ``QuantizedGraph.params[op]`` except the ``*_bits`` widths, under
  ``params.<op>.<field>`` (``params.blocks.0.attn.qkv.w_q``,
  ``params.blocks.0.attn.softmax.in_mult``; role ``param``, or
  ``param_float`` for the reference float scales) -- the same names as the
  members of the stored ``qvit.npz``.

Widths: the tensor's quantizer where it defines one (`_declared_widths`:
codes, two-scaled words, Q12 fixed point, int32 accumulators), the weight
bits for weight codes, otherwise the narrowest two's complement width
holding every value (``bits_source: "data"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


__all__ = ["VectorTensor", "collect_tensors", "layer_records", "param_leaves"]


@dataclass(frozen=True)
class VectorTensor:
    name: str
    role: str
    array: np.ndarray
    bits: int
    signed: bool
    encoding: str
    bits_source: str


def _code_dtype(bits: int, signed: bool) -> np.dtype:
    for width in (8, 16, 32, 64):
        if bits <= width:
            return np.dtype(f"{'int' if signed else 'uint'}{width}")
    raise ValueError(f"{bits}-bit codes")


def _data_bits(arr: np.ndarray) -> int:
    """Narrowest two's complement width holding every value (at least 2)."""
    if arr.size == 0:
        return 2
    lo, hi = int(arr.min()), int(arr.max())
    return max(2, max(hi.bit_length(), (-lo - 1).bit_length() if lo < 0 else 0) + 1)


def _declared_widths(qg) -> dict[str, tuple[int, bool]]:
    """(bits, signed) of the graph's tensors (from their quantizers) and weight / bias codes."""
    w = {}
    for t, qz in qg.quantizers.items():
        if qz.kind == "two_scaled":               # words: flag bit + field, in [0, 2**bits - 1]
            w[t] = (qz.bits, False)
        elif qz.kind in ("fixed_point", "accumulator"):
            w[t] = (qz.bits, True)
        else:
            w[t] = (qz.bits, qz.signed)
    for op in qg.graph.ops:
        p = qg.params.get(op.name)
        if hasattr(p, "w_q"):
            w[f"params.{op.name}.w_q"] = (p.w_bits, True)
            w[f"params.{op.name}.bias_q"] = (32, True)
        elif hasattr(p, "codes"):                 # constant tokens / position embedding at the output's width
            qo = qg.quantizers[op.outputs[0]]
            w[f"params.{op.name}.codes"] = (qo.bits, qo.signed)
    return w


def param_leaves(node, prefix: str = ""):
    """(path, value) of every ndarray and integer scalar leaf of a params tree (dataclasses, tuples, dicts)."""
    if isinstance(node, np.ndarray):
        yield prefix, node
    elif dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            if f.name == "meta" or f.name.endswith("_bits"):
                continue
            yield from param_leaves(getattr(node, f.name), f"{prefix}.{f.name}".lstrip("."))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from param_leaves(v, f"{prefix}.{i}")
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from param_leaves(v, f"{prefix}.{k}")
    elif isinstance(node, (int, np.integer)) and not isinstance(node, bool):
        yield prefix, np.asarray(node, dtype=np.int64)


def _make(name, role, arr, declared) -> VectorTensor:
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        return VectorTensor(name, role if role != "param" else "param_float", arr, arr.dtype.itemsize * 8,
                            True, "ieee754", "dtype")
    data_bits = _data_bits(arr)
    if name in declared:
        bits, signed = declared[name]
        lo = 0 if not signed else -(1 << (bits - 1))
        hi = (1 << bits) - 1 if not signed else (1 << (bits - 1)) - 1
        if arr.size == 0 or (lo <= int(arr.min()) and int(arr.max()) <= hi):
            dt = arr.dtype if role == "param" else _code_dtype(bits, signed)
            return VectorTensor(name, role, arr.astype(dt), bits, signed,
                                "twos_complement" if signed else "unsigned", "declared")
    dt = arr.dtype if role == "param" else _code_dtype(data_bits, True)
    return VectorTensor(name, role, arr.astype(dt), data_bits, True, "twos_complement", "data")


def collect_tensors(qg, images: np.ndarray, codes: dict, extras: dict,
                    qvit_header: np.ndarray) -> list[VectorTensor]:
    """Every tensor of a vector set, in file order: images, activations, trace, params and
    ``qvit.header`` (the qvit file's JSON header bytes, so a damaged byte there is located too)."""
    declared = _declared_widths(qg)
    out = [_make("images", "image", np.asarray(images, dtype=np.float32), declared)]
    out += [_make(k, "activation", v, declared) for k, v in codes.items()]
    out += [_make(f"trace.{k}", "trace", np.asarray(v), declared) for k, v in extras.items()]
    out += [_make(p, "param", v, declared) for p, v in param_leaves(dict(qg.params), "params")]
    out.append(VectorTensor("qvit.header", "qvit_header", qvit_header.astype(np.uint8), 8, False, "unsigned",
                            "dtype"))
    return out


def layer_records(qg, names: set[str]) -> list[dict]:
    """One record per op of the graph, in execution order: name, kind, input / parameter / output
    tensor names (those the vector set holds; a view's input is its producer's tensor)."""
    layers = []
    for op in qg.graph.ops:
        own = [p for p, _ in param_leaves(qg.params.get(op.name), f"params.{op.name}")]
        layers.append(dict(name=op.name, kind=op.kind, inputs=[t for t in op.inputs if t in names],
                           params=sorted(p for p in own if p in names),
                           outputs=[t for t in op.outputs if t in names]))
    return layers
