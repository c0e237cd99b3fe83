"""The structure and float params of a timm VisionTransformer in a QDQ ONNX graph (docs/onnx.md).

    g = read_vit(QDQModel("deit_qdq.onnx"))     # VitGraph: dense layers, norms, tokens, pooling, heads

`reference.onnx_architecture` turns it into timm kwargs, a model and its
state dict. For what ``torch.onnx.export`` (TorchScript exporter, opset >= 17,
so that LayerNorm is one ``LayerNormalization`` node) writes for timm's
``VisionTransformer`` / ``VisionTransformerDistilled`` with pre-norm ``Block``s,
then ``onnxruntime.quantization.quantize_static`` (QDQ). Reading is by
structure, not by name (the exporter renames the transposed Linear weights
``onnx::MatMul_N``):

* the GEMMs (``Conv``/``MatMul``/``Gemm``) in graph order are the patch-embed
  ``Conv``, then per block ``qkv``, ``q k^T``, ``attn v``, ``proj``, ``fc1``,
  ``fc2`` (weight, activation, activation, weight, weight, weight), then 0-2
  heads (2: distilled DeiT). A weight is a constant or the
  ``DequantizeLinear`` of one (dequantized as onnxruntime does); a MatMul's
  bias is the constant of the ``Add`` that reads it, a LayerScale ``gamma``
  the constant of the ``Mul`` after that;
* ``norm1`` / ``norm2``: the ``LayerNormalization`` that ``qkv`` / ``fc1``
  read (through Q/DQ pairs and views); its ``epsilon`` is timm's ``eps``;
* embedding: the prefix tokens are the constants ``Expand``-ed into the
  ``Concat`` on the token axis, in order (cls, then dist or registers); the
  position embedding is the ``[1, T, D]`` constant added before
  (``no_embed_class``) or after that ``Concat``; ``T`` minus the prefix
  tokens is the patch grid (the ONNX input's ``H x W`` when static, else
  square). A ``LayerNormalization`` after it is ``norm_pre``;
* the heads: ``num_heads`` from the attention ``Reshape`` shape
  ``[B, N, 3, H, head_dim]`` (constant ``H``, or ``D / head_dim``; else
  ``--num-heads``); the activation between ``fc1`` and ``fc2`` from its ops
  (``Erf``: gelu, ``Tanh``: gelu_tanh, ``Sigmoid``: quick_gelu, or ``Gelu``);
* after the blocks: token pooling (``Gather`` on the token axis) or avg
  (``ReduceMean``; after a ``Slice``: prefix tokens excluded), a
  ``LayerNormalization`` before it (``norm``) or after it (``fc_norm``).

Anything else is refused in one line (`UnreadableGraph`) asking for ``--model``.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from simulator.errors import InputError

if TYPE_CHECKING:
    from reference.onnx_import import QDQModel

__all__ = ["UnreadableGraph", "Dense", "Norm", "VitBlock", "VitGraph", "read_vit"]

_VIEWS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten")
_BLOCK = "WAAWWW"          # qkv, q k^T, attn v, proj, fc1, fc2


class UnreadableGraph(InputError):
    """The graph is not one this reader knows (the caller may fall back on ``--model``)."""


@dataclasses.dataclass
class Dense:
    weight: np.ndarray              # [N, K] ([D, C, ph, pw] for the patch Conv), float32
    bias: np.ndarray | None
    out: str                        # the value after the bias (and before a LayerScale)


@dataclasses.dataclass
class Norm:
    weight: np.ndarray
    bias: np.ndarray
    eps: float


@dataclasses.dataclass
class VitBlock:
    norm1: Norm
    qkv: Dense
    proj: Dense
    norm2: Norm
    fc1: Dense
    fc2: Dense
    ls1: np.ndarray | None
    ls2: np.ndarray | None
    act: str
    num_heads: int | None


@dataclasses.dataclass
class VitGraph:
    patch: Dense
    prefix: list                    # [1, n, D] constants in Concat order
    pos_embed: np.ndarray | None
    no_embed_class: bool
    norm_pre: Norm | None
    blocks: list
    norm: Norm | None
    fc_norm: Norm | None
    pool: str                       # "token" | "avg"
    pool_include_prefix: bool
    heads: list                     # Dense; two for a distilled DeiT
    input_hw: tuple                 # (H, W), None where the ONNX input is dynamic


class _Reader:
    def __init__(self, m: "QDQModel"):
        self.m, self.path = m, m.path
        self.index = {id(n): i for i, n in enumerate(m.nodes)}
        self.users = defaultdict(list)
        for n in m.nodes:
            for i in n.input:
                self.users[i].append(n)

    def fail(self, what: str) -> UnreadableGraph:
        return UnreadableGraph(f"{self.path}: {what}; pass --model NAME (the timm architecture)")

    def attr(self, node, name, default=None):
        from onnx import helper
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

    def array(self, name: str):
        """A constant (initializer, Constant, constant subgraph) or the DequantizeLinear of one, as
        onnxruntime computes it (float32 ``(q - zp) * scale``); None for an activation."""
        if not name:
            return None
        c = self.m.const(name)
        if c is not None:
            return np.asarray(c)
        n = self.m.producer.get(name)
        if n is None or n.op_type != "DequantizeLinear" or self.m.const(n.input[0]) is None:
            return None
        q = np.asarray(self.m.const(n.input[0])).astype(np.int64)
        s = np.asarray(self.m.const(n.input[1]), np.float32)
        has_zp = len(n.input) > 2 and n.input[2]
        zp = np.asarray(self.m.const(n.input[2]), np.int64) if has_zp else np.zeros((), np.int64)
        if s.ndim == 1 and q.ndim > 0:            # per axis
            shape = [1] * q.ndim
            shape[self.attr(n, "axis", 1) % q.ndim] = -1
            s, zp = s.reshape(shape), zp.reshape(shape) if zp.ndim == 1 else zp
        return (q - zp).astype(np.float32) * s

    def source(self, value: str):
        """The node that computes ``value``, looking through activation Q/DQ pairs and views."""
        while True:
            n = self.m.producer.get(value)
            if n is None:
                return None
            if n.op_type == "DequantizeLinear" and self.array(value) is None:
                q = self.m.producer.get(n.input[0])
                if q is None or q.op_type != "QuantizeLinear":
                    return n
                value = q.input[0]
            elif n.op_type in _VIEWS:
                value = n.input[0]
            else:
                return n

    def readers(self, value: str) -> list:
        """(node, the name it reads ``value`` by) of the nodes reading ``value``, through activation Q/DQ pairs."""
        out = []
        for n in self.users[value]:
            if n.op_type == "QuantizeLinear" and n.input[0] == value:
                out += [r for d in self.users[n.output[0]] if d.op_type == "DequantizeLinear"
                        for r in self.readers(d.output[0])]
            else:
                out.append((n, value))
        return out

    def const_user(self, value: str, op: str, shape: tuple):
        """(constant, output) of the one ``op`` node reading ``value`` and a constant of ``shape``."""
        for n, value in self.readers(value):
            if n.op_type == op and len(n.input) == 2:
                other = n.input[1] if n.input[0] == value else n.input[0]
                c = self.array(other)
                if c is not None and c.size == int(np.prod(shape)) and c.shape[-1:] == shape[-1:]:
                    return c.reshape(shape).astype(np.float32), n.output[0]
        return None, value

    def dense(self, node, what: str) -> Dense:
        w = self.array(node.input[1])
        if node.op_type == "Conv":
            if (self.attr(node, "group", 1) != 1 or list(self.attr(node, "strides", [])) != list(w.shape[2:])
                    or any(self.attr(node, "pads", [0])) or any(d != 1 for d in self.attr(node, "dilations", [1]))):
                raise self.fail(f"{what}: Conv is not a patch embedding (stride = kernel, no padding, one group)")
            return Dense(w.astype(np.float32), self._bias(node), node.output[0])
        if node.op_type == "Gemm":
            if self.attr(node, "transA", 0) or (self.attr(node, "alpha", 1.0), self.attr(node, "beta", 1.0)) != (1, 1):
                raise self.fail(f"{what}: Gemm with transA/alpha/beta")
            w = w if self.attr(node, "transB", 0) else w.T
            return Dense(w.astype(np.float32), self._bias(node), node.output[0])
        if w.ndim != 2:
            raise self.fail(f"{what}: MatMul weight of shape {w.shape} (expected 2-D)")
        bias, out = self.const_user(node.output[0], "Add", (w.shape[1],))
        return Dense(np.ascontiguousarray(w.T, np.float32), bias, out)

    def _bias(self, node):
        b = self.array(node.input[2]) if len(node.input) > 2 else None
        return None if b is None else b.reshape(-1).astype(np.float32)

    def norm(self, node, what: str) -> Norm:
        if node is None or node.op_type != "LayerNormalization":
            kind = "the graph input" if node is None else node.op_type
            raise self.fail(f"{what}: reads {kind}, expected a LayerNormalization (pre-norm timm Block; "
                            "export with opset >= 17)")
        if self.attr(node, "axis", -1) != -1:
            raise self.fail(f"{what}: LayerNormalization over axis {self.attr(node, 'axis')}")
        w = self.array(node.input[1])
        b = self.array(node.input[2]) if len(node.input) > 2 else np.zeros_like(w)
        eps = float(str(np.float32(self.attr(node, "epsilon", 1e-5))))   # the float32 attribute's shortest decimal
        return Norm(w.astype(np.float32), b.astype(np.float32), eps)

    def heads_of(self, qkv: Dense, dim: int) -> int | None:
        """H of the ``[B, N, 3, H, head_dim]`` Reshape after qkv (constant H, or D / head_dim), else None."""
        for n, _ in self.readers(qkv.out):
            if n.op_type != "Reshape":
                continue
            dims = self._shape(n.input[1])
            if dims is None or len(dims) != 5 or dims[2] != 3:
                continue
            h, hd = dims[3], dims[4]
            if h and h > 0 and (not hd or hd <= 0 or h * hd == dim):
                return int(h)
            if hd and hd > 0 and dim % hd == 0:
                return dim // int(hd)
        return None

    def _shape(self, name: str):
        c = self.m.const(name)
        if c is not None:
            return [int(v) for v in np.asarray(c).reshape(-1)]
        n = self.m.producer.get(name)
        if n is None or n.op_type != "Concat":
            return None
        dims = []
        for i in n.input:
            v = self.m.const(i)
            dims += [None] if v is None else [int(x) for x in np.asarray(v).reshape(-1)]
        return dims


def _activation(r: _Reader, fc1, fc2, what: str) -> str:
    ops = {n.op_type: n for n in r.m.nodes[r.index[id(fc1)] + 1:r.index[id(fc2)]]}
    if "Gelu" in ops:
        return "gelu_tanh" if r.attr(ops["Gelu"], "approximate", b"none") in (b"tanh", "tanh") else "gelu"
    for op, act in (("Erf", "gelu"), ("Tanh", "gelu_tanh"), ("Sigmoid", "quick_gelu")):
        if op in ops:
            return act
    raise r.fail(f"{what}: no GELU between fc1 and fc2 (ops: {', '.join(sorted(ops))})")


def _read_block(r: _Reader, g: list, i: int) -> VitBlock:
    qkv, proj, fc1, fc2 = (r.dense(g[j], f"blocks.{i}") for j in (0, 3, 4, 5))
    dim = qkv.weight.shape[1]
    ls1, _ = r.const_user(proj.out, "Mul", (dim,))
    ls2, _ = r.const_user(fc2.out, "Mul", (dim,))
    return VitBlock(norm1=r.norm(r.source(g[0].input[0]), f"blocks.{i}.attn.qkv input"), qkv=qkv, proj=proj,
                    norm2=r.norm(r.source(g[4].input[0]), f"blocks.{i}.mlp.fc1 input"), fc1=fc1, fc2=fc2,
                    ls1=ls1, ls2=ls2, act=_activation(r, g[4], g[5], f"blocks.{i}.mlp"),
                    num_heads=r.heads_of(qkv, dim))


def _read_embedding(r: _Reader, conv, end: int):
    """(prefix constants, pos_embed, no_embed_class, norm_pre) from the nodes between the Conv and ``end``."""
    region = r.m.nodes[r.index[id(conv)] + 1:end]
    prefix, pos, pos_first, norm_pre, cat = [], None, False, None, None
    for n in region:
        if n.op_type == "Concat" and r.attr(n, "axis") == 1 and r.array(n.output[0]) is None:
            cat = n
            for i in n.input:
                p = r.source(i)
                c = r.array(p.input[0]) if p is not None and p.op_type == "Expand" else r.array(i)
                if c is not None:
                    prefix.append(c.astype(np.float32))
        elif n.op_type == "Add" and pos is None:
            for a, b in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
                c = r.array(b)
                if c is not None and c.ndim == 3 and r.array(a) is None:
                    pos, pos_first = c.astype(np.float32), r.source(a) is conv
        elif n.op_type == "LayerNormalization":
            if r.source(n.input[0]) is conv:
                raise r.fail("a LayerNormalization on the patch embedding (embed_norm_layer) is not read")
            norm_pre = r.norm(n, "norm_pre")
    if cat is None and prefix:
        raise r.fail("prefix tokens without a Concat")
    return prefix, pos, pos_first, norm_pre


def _read_tail(r: _Reader, start: int, heads: list):
    """(norm, fc_norm, pool, pool_include_prefix) from the nodes after the last block."""
    region = r.m.nodes[start:r.index[id(heads[0])] if heads else len(r.m.nodes)]
    pools = [n for n in region if (n.op_type == "Gather" and r.attr(n, "axis", 0) == 1) or n.op_type == "ReduceMean"]
    if not pools:
        raise r.fail("no pooling after the blocks (Gather of a token or ReduceMean over the tokens)")
    at = r.index[id(pools[0])]
    norms = [n for n in region if n.op_type == "LayerNormalization"]
    before = [n for n in norms if r.index[id(n)] < at]
    after = [n for n in norms if r.index[id(n)] > at]
    if len(before) > 1 or len(after) > 1 or (before and after):
        raise r.fail(f"{len(norms)} LayerNormalizations after the blocks (expected norm or fc_norm)")
    avg = pools[0].op_type == "ReduceMean"
    include = avg and (r.source(pools[0].input[0]) or pools[0]).op_type != "Slice"
    return (r.norm(before[0], "norm") if before else None, r.norm(after[0], "fc_norm") if after else None,
            "avg" if avg else "token", include)


def read_vit(m: "QDQModel") -> VitGraph:
    """The ViT structure and float params of a QDQ graph (module docstring); `UnreadableGraph` otherwise."""
    r = _Reader(m)
    gemms = [n for n in m.nodes if n.op_type in ("Conv", "MatMul", "Gemm")]
    kinds = "".join("W" if r.array(n.input[1]) is not None else "A" for n in gemms)
    depth = 0
    while kinds[1 + 6 * depth:7 + 6 * depth] == _BLOCK:
        depth += 1
    tail = kinds[1 + 6 * depth:]
    if not gemms or gemms[0].op_type != "Conv" or kinds[0] != "W" or len(tail) > 2 or set(tail) - {"W"}:
        raise r.fail(f"GEMMs {kinds or 'none'} (W: constant weight, A: two activations) are not timm's ViT "
                     "(patch Conv, then qkv, q k^T, attn v, proj, fc1, fc2 per block, then 0-2 heads)")
    blocks = [_read_block(r, gemms[1 + 6 * i:7 + 6 * i], i) for i in range(depth)]
    heads = [r.dense(n, "head") for n in gemms[1 + 6 * depth:]]
    end = r.index[id(gemms[1])] if depth else len(m.nodes)
    start = r.index[id(gemms[6 * depth])] + 1 if depth else r.index[id(gemms[0])] + 1
    norm_pre_end = r.index[id(r.source(gemms[1].input[0]))] if depth else end
    prefix, pos, pos_first, norm_pre = _read_embedding(r, gemms[0], norm_pre_end)
    norm, fc_norm, pool, include = _read_tail(r, start, gemms[1 + 6 * depth:])
    read = 2 * depth + sum(n is not None for n in (norm_pre, norm, fc_norm))
    lns = [n for n in m.nodes if n.op_type == "LayerNormalization"]
    if len(lns) != read:
        raise r.fail(f"{len(lns)} LayerNormalizations, {read} of them are norm1/norm2/norm_pre/norm/fc_norm "
                     "(qk_norm, a patch-embed or MLP norm are not read)")
    inp = next(i for i in m.model.graph.input if i.name not in m.init)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise r.fail(f"input {inp.name} has {len(dims)} dimensions, expected [B, C, H, W]")
    return VitGraph(r.dense(gemms[0], "patch_embed"), prefix, pos, pos_first, norm_pre, blocks, norm, fc_norm,
                    pool, include, heads, (dims[2], dims[3]))
