"""Which tensors a vector set holds, with their widths, and the per-layer view.

Collected generically so that later recipes add tensors without touching
this module:

* ``images`` -- the float input images (role ``image``, IEEE-754 float32);
* every boundary in ``IntegerExecutor.run(...).codes`` (role ``activation``),
  named as the executor names it (``input``, ``x0``, ``blocks.0.q``, ...);
* every per-image array in ``trace.extras`` (role ``trace``: exit decisions,
  group maps, predicted scales of dynamic recipes) under ``trace.<key>``;
* every array leaf and every integer scalar leaf of the `QuantizedViT`
  dataclass tree except ``meta`` and the ``*_bits`` widths, under
  ``params.<path>`` (``params.blocks.0.qkv.w_q``, ``params.blocks.0.softmax.in_mult``;
  role ``param``, or ``param_float`` for the reference float scales).

Widths: the datapath's declared width where it defines one (`_declared_widths`),
otherwise the narrowest two's complement width holding every value
(``bits_source: "data"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from simulator.int_nonlinear import GELU_INPUT_LIMIT
from simulator.qvit import QuantizedViT

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


def _declared_widths(q: QuantizedViT) -> dict[str, tuple[int, bool]]:
    """(bits, signed) of the static graph's boundaries and integer parameters."""
    rb = (q.residual_bits, True)
    w = {"input": (q.in_bits, True), "x0": rb, "norm": (q.norm.out_bits, True),
         "logits": (q.head.out_bits, True), "params.cls_q": rb, "params.pos_q": rb}
    for i, b in enumerate(q.blocks):
        p = f"blocks.{i}."
        fc1 = (b.fc1.out_bits, True) if b.fc1.out_bits else (GELU_INPUT_LIMIT.bit_length() + 1, True)
        w.update({p + "norm1": (b.norm1.out_bits, True), p + "q": (b.qkv.out_bits, True),
                  p + "k": (b.qkv.out_bits, True), p + "v": (b.qkv.out_bits, True),
                  p + "attn": (b.softmax.out_bits, False), p + "attn_out": (b.av.out_bits, True),
                  p + "x_mid": rb, p + "norm2": (b.norm2.out_bits, True), p + "fc1": fc1,
                  p + "gelu": (b.gelu.out_bits, True), p + "x_out": rb})
    for path, lin in _linears(q):
        w[f"params.{path}.w_q"] = (lin.w_bits, True)
        w[f"params.{path}.bias_q"] = (32, True)
    return w


def _linears(q: QuantizedViT):
    yield "patch_embed", q.patch_embed
    for i, b in enumerate(q.blocks):
        for f in ("qkv", "proj", "fc1", "fc2"):
            yield f"blocks.{i}.{f}", getattr(b, f)
    yield "head", q.head


def param_leaves(node, prefix: str = ""):
    """(path, value) of every ndarray and integer scalar leaf of a QuantizedViT tree."""
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


def collect_tensors(q: QuantizedViT, images: np.ndarray, codes: dict, extras: dict,
                    qvit_header: np.ndarray) -> list[VectorTensor]:
    """Every tensor of a vector set, in file order: images, activations, trace, params and
    ``qvit.header`` (the qvit file's JSON header bytes, so a damaged byte there is located too)."""
    declared = _declared_widths(q)
    out = [_make("images", "image", np.asarray(images, dtype=np.float32), declared)]
    out += [_make(k, "activation", v, declared) for k, v in codes.items()]
    out += [_make(f"trace.{k}", "trace", np.asarray(v), declared) for k, v in extras.items()]
    out += [_make(f"params.{p}", "param", v, declared) for p, v in param_leaves(q)]
    out.append(VectorTensor("qvit.header", "qvit_header", qvit_header.astype(np.uint8), 8, False, "unsigned",
                            "dtype"))
    return out


def layer_records(q: QuantizedViT, names: set[str]) -> list[dict]:
    """Per layer of the static graph: kind, input / parameter / output tensor names.

    ``norm``'s input is the class-token row of the last residual stream
    (``"select": "[:, 0]"``). Tensors of later recipes that no layer lists are
    still in the manifest's tensor list.
    """
    def params(module):
        return sorted(n for n in names if n.startswith(f"params.{module}."))

    layers = [dict(name="quantize_input", kind="quantize_input", inputs=["images"], params=[], outputs=["input"]),
              dict(name="patch_embed", kind="linear+pos_embed", inputs=["input"],
                   params=params("patch_embed") + ["params.cls_q", "params.pos_q"], outputs=["x0"])]
    x = "x0"
    for i in range(len(q.blocks)):
        p, m = f"blocks.{i}.", f"blocks.{i}"
        layers += [
            dict(name=p + "norm1", kind="layernorm", inputs=[x], params=params(m + ".norm1"), outputs=[p + "norm1"]),
            dict(name=p + "attn.qkv", kind="linear", inputs=[p + "norm1"], params=params(m + ".qkv"),
                 outputs=[p + "q", p + "k", p + "v"]),
            dict(name=p + "attn.softmax", kind="matmul+softmax", inputs=[p + "q", p + "k"],
                 params=params(m + ".softmax"), outputs=[p + "attn"]),
            dict(name=p + "attn.av", kind="matmul+requantize", inputs=[p + "attn", p + "v"],
                 params=params(m + ".av"), outputs=[p + "attn_out"]),
            dict(name=p + "attn.proj", kind="linear+residual", inputs=[p + "attn_out", x],
                 params=params(m + ".proj"), outputs=[p + "x_mid"]),
            dict(name=p + "norm2", kind="layernorm", inputs=[p + "x_mid"], params=params(m + ".norm2"),
                 outputs=[p + "norm2"]),
            dict(name=p + "mlp.fc1", kind="linear", inputs=[p + "norm2"], params=params(m + ".fc1"),
                 outputs=[p + "fc1"]),
            dict(name=p + "mlp.gelu", kind="gelu", inputs=[p + "fc1"], params=params(m + ".gelu"),
                 outputs=[p + "gelu"]),
            dict(name=p + "mlp.fc2", kind="linear+residual", inputs=[p + "gelu", p + "x_mid"],
                 params=params(m + ".fc2"), outputs=[p + "x_out"]),
        ]
        x = p + "x_out"
    layers += [dict(name="norm", kind="layernorm", inputs=[x], select={x: "[:, 0]"}, params=params("norm"),
                    outputs=["norm"]),
               dict(name="head", kind="linear", inputs=["norm"], params=params("head"), outputs=["logits"])]
    return layers
