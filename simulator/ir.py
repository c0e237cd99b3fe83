"""The typed graph of a Vision Transformer: frozen ops over named tensors.

A `Graph` is the forward pass written once, as data: a tuple of ops in
execution order, the name of its input tensor (the images, ``[B, C, H, W]``),
the names of its outputs, and per-op parameters (numpy float64 arrays keyed
by op name, then by parameter name). Every tensor is produced by exactly one
op; an op reads only tensors produced before it. `simulator.walk` interprets
the op list with an op set (float torch ops, fake-quant ops, numba integer
ops); this module only describes it and infers shapes. Numpy only: no torch.

Shapes (batch first; T tokens, D channels, H heads, d head size):

==============  ================================================  ===========================
kind            computes                                          params
==============  ================================================  ===========================
patchify        crop (or zero-pad) to the patch grid, then        --
                ``[B,C,H,W] -> [B, gh*gw, C*ph*pw]`` in the
                conv weight's flattening order (c, i, j)
linear          ``y = x W^T + b`` (``+ r`` if fused residual)     weight [N,K], bias [N]
head            ``y = x W^T + b`` on pooled features [B,D]        weight, bias
layer_norm      ``(x - mean) / sqrt(var + eps) * gamma + beta``   weight [D], bias [D]
                over the last axis (biased variance)
token_concat    ``cat([tokens] * B, x)`` along tokens (prefix)    tokens [P,D]
add_const       ``x + value`` (value broadcast over the batch)    value [T,D]
split           split the last axis into ``sizes``                --
split_heads     ``[B,T,n*H*d] -> n x [B,H,T,d]`` (``windows`` W:   --
                ``[B,W*N,n*H*d] -> n x [B,W*H,N,d]``)
merge_heads     ``[B,H,T,d] -> [B,T,H*d]`` (``windows`` W:          --
                ``[B,W*H,N,d] -> [B,W*N,H*d]``)
gather_tokens   token index op (Swin): window partition with      --
                cyclic shift, its inverse, 2x2 patch merging
                (`simulator.windows`); ``[B,T,C] -> [B,T',k*C]``
window_bias     Swin scores + relative position bias per head     bias [H,N,N],
                + shifted-window mask per window (0 / -100)       mask [W,N,N]
matmul          ``scale * (a @ b^T)`` or ``scale * (a @ b)``      --
softmax         ``exp(x - max) / sum exp(x - max)``, last axis    --
activation      gelu_erf ``x Phi(x)``; gelu_tanh                  --
                ``x/2 (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))``;
                quick_gelu ``x sigmoid(1.702 x)``
add             ``a + b``                                         --
pool            token: ``x[:, index]``; avg: mean over tokens     --
                ``num_prefix_tokens:``
mean            ``(a + b + ...) / n`` (distilled DeiT's heads)    --
exit            confidence ``max softmax(logits)``; images with   --
                confidence >= threshold leave the batch
==============  ================================================  ===========================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Mapping

import numpy as np

from simulator.errors import InputError

__all__ = ["Op", "Patchify", "Linear", "Head", "LayerNorm", "TokenConcat", "AddConst", "Split", "SplitHeads",
           "MergeHeads", "GatherTokens", "WindowBias", "MatMul", "Softmax", "Activation", "Add", "Pool", "Mean", "Exit", "Graph", "GraphError",
           "ACTIVATIONS", "tensor_shapes", "op_shapes", "check_images"]

ACTIVATIONS = ("gelu_erf", "gelu_tanh", "quick_gelu")

Shape = tuple[int, ...]


class GraphError(ValueError):
    """A malformed graph: a bug in whoever built it, not bad user input."""


@dataclass(frozen=True)
class Op:
    """One operation: a unique ``name`` (usually the timm module path), the
    tensors it reads and the tensors it produces."""
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    kind: ClassVar[str] = ""
    param_names: ClassVar[tuple[str, ...]] = ()
    arity: ClassVar[tuple[int, int]] = (1, 1)     # (min, max) number of inputs

    def __post_init__(self):
        lo, hi = self.arity
        if not lo <= len(self.inputs) <= hi:
            raise GraphError(f"{self.name}: {self.kind} takes {lo}..{hi} inputs, got {len(self.inputs)}")
        if not self.outputs:
            raise GraphError(f"{self.name}: no outputs")

    def out_shapes(self, params: Mapping[str, np.ndarray], *shapes: Shape) -> tuple[Shape, ...]:
        return (shapes[0],)


@dataclass(frozen=True)
class Patchify(Op):
    """Images -> patch rows. ``pad``: zero-pad bottom/right up to whole
    patches (timm's ``dynamic_img_pad``); otherwise the remainder rows and
    columns are dropped, as a stride-``p`` convolution drops them."""
    patch_size: tuple[int, int] = (16, 16)
    pad: bool = False
    kind: ClassVar[str] = "patchify"

    def grid(self, height: int, width: int) -> tuple[int, int]:
        ph, pw = self.patch_size
        if self.pad:
            return -(-height // ph), -(-width // pw)
        return height // ph, width // pw

    def out_shapes(self, params, images):
        b, c, h, w = images
        gh, gw = self.grid(h, w)
        if gh == 0 or gw == 0:
            raise InputError(f"{self.name}: image {h}x{w} is smaller than one {self.patch_size} patch")
        return ((b, gh * gw, c * self.patch_size[0] * self.patch_size[1]),)


@dataclass(frozen=True)
class Linear(Op):
    """``y = x W^T + b``; a second input is a residual added to the result
    (the block's ``x + proj(...)``, fused into the GEMM's output stage)."""
    kind: ClassVar[str] = "linear"
    param_names: ClassVar[tuple[str, ...]] = ("weight", "bias")
    arity: ClassVar[tuple[int, int]] = (1, 2)

    @property
    def residual(self) -> str | None:
        return self.inputs[1] if len(self.inputs) == 2 else None

    def out_shapes(self, params, x, *residual):
        n, k = params["weight"].shape
        if x[-1] != k:
            raise GraphError(f"{self.name}: input has {x[-1]} features, weight expects {k}")
        out = x[:-1] + (n,)
        if residual and residual[0] != out:
            raise GraphError(f"{self.name}: residual shape {residual[0]} != output {out}")
        return (out,)


@dataclass(frozen=True)
class Head(Linear):
    """The classifier: a linear layer on the pooled features."""
    kind: ClassVar[str] = "head"
    arity: ClassVar[tuple[int, int]] = (1, 1)


@dataclass(frozen=True)
class LayerNorm(Op):
    eps: float = 1e-6
    kind: ClassVar[str] = "layer_norm"
    param_names: ClassVar[tuple[str, ...]] = ("weight", "bias")


@dataclass(frozen=True)
class TokenConcat(Op):
    """Prefix tokens (``cls``, ``dist``, ``reg``) put before the patch tokens."""
    tokens: tuple[str, ...] = ("cls",)
    kind: ClassVar[str] = "token_concat"
    param_names: ClassVar[tuple[str, ...]] = ("tokens",)

    def out_shapes(self, params, x):
        return ((x[0], x[1] + len(self.tokens), x[2]),)


@dataclass(frozen=True)
class AddConst(Op):
    """``x + value``: the position embedding (constant over the batch)."""
    kind: ClassVar[str] = "add_const"
    param_names: ClassVar[tuple[str, ...]] = ("value",)

    def out_shapes(self, params, x):
        v = params["value"].shape
        if tuple(x[1:]) != tuple(v):
            raise InputError(f"{self.name}: the graph holds a {v[0]}-token position embedding, the image gives "
                             f"{x[1]} tokens; lower the model again for this image size")
        return (x,)


@dataclass(frozen=True)
class Split(Op):
    """Split the last axis into consecutive pieces of ``sizes``."""
    sizes: tuple[int, ...] = ()
    kind: ClassVar[str] = "split"

    def out_shapes(self, params, x):
        if sum(self.sizes) != x[-1] or len(self.sizes) != len(self.outputs):
            raise GraphError(f"{self.name}: cannot split {x[-1]} channels into {self.sizes}")
        return tuple(x[:-1] + (s,) for s in self.sizes)


@dataclass(frozen=True)
class SplitHeads(Op):
    """``[B,T,n*H*d] -> n x [B,H,T,d]``: channel ``c = (j*H + h)*d + e`` of
    the input goes to output ``j``, head ``h``, position ``e`` (timm's
    ``reshape(B, T, n, H, d).permute(2, 0, 3, 1, 4)``). With ``windows`` W
    (Swin's window attention) the T = W*N tokens are W windows of N and
    window ``w``, head ``h`` is attention batch ``w*H + h``: ``[B,W*N,n*H*d]
    -> n x [B,W*H,N,d]``."""
    num_heads: int = 1
    windows: int = 1
    kind: ClassVar[str] = "split_heads"

    def out_shapes(self, params, x):
        b, t, c = x
        n, h, w = len(self.outputs), self.num_heads, self.windows
        if c % (n * h) or t % w:
            raise GraphError(f"{self.name}: {t}x{c} does not split into {w} windows of {n} x {h} heads")
        return ((b, w * h, t // w, c // (n * h)),) * n


@dataclass(frozen=True)
class MergeHeads(Op):
    """``[B,H,T,d] -> [B,T,H*d]`` (timm's ``transpose(1, 2).reshape``); with
    ``windows`` W: ``[B,W*H,N,d] -> [B,W*N,H*d]`` (window-major tokens)."""
    windows: int = 1
    kind: ClassVar[str] = "merge_heads"

    def out_shapes(self, params, x):
        b, wh, t, d = x
        w = self.windows
        if wh % w:
            raise GraphError(f"{self.name}: {wh} attention batches are not {w} windows of heads")
        return ((b, w * t, (wh // w) * d),)


@dataclass(frozen=True)
class GatherTokens(Op):
    """A pure index op on tokens (Swin, `simulator.windows.token_index`):
    ``y[:, t] = concat_j x[:, index[t, j]]``, ``[B,T,C] -> [B,T',k*C]``.
    ``pattern``: ``window_partition`` (cyclic shift by ``-shift`` then
    windows of ``window`` on the ``grid``, window-major), ``window_reverse``
    (its inverse) or ``patch_merge`` (2x2 neighbours, timm's channel order)."""
    pattern: str = "window_partition"
    grid: tuple[int, int] = (1, 1)
    window: tuple[int, int] = (1, 1)
    shift: tuple[int, int] = (0, 0)
    kind: ClassVar[str] = "gather_tokens"

    def __post_init__(self):
        super().__post_init__()
        from simulator.windows import check_pattern
        try:
            check_pattern(self)
        except ValueError as e:
            raise GraphError(str(e)) from None

    def out_shapes(self, params, x):
        b, t, c = x
        gh, gw = self.grid
        if t != gh * gw:
            raise GraphError(f"{self.name}: {t} tokens are not the {gh}x{gw} grid")
        if self.pattern == "patch_merge":
            return ((b, t // 4, 4 * c),)
        return (x,)


@dataclass(frozen=True)
class WindowBias(Op):
    """Swin's attention scores: ``x[b, w*H + h] + bias[h] + mask[w]`` on
    ``[B, W*H, N, N]``; ``bias`` the relative position bias per head,
    ``mask`` timm's shifted-window mask (0 or -100; all 0 unshifted)."""
    num_heads: int = 1
    kind: ClassVar[str] = "window_bias"
    param_names: ClassVar[tuple[str, ...]] = ("bias", "mask")

    def out_shapes(self, params, x):
        h, n = params["bias"].shape[:2]
        w = params["mask"].shape[0]
        if x[1:] != (w * h, n, n) or h != self.num_heads:
            raise GraphError(f"{self.name}: scores {x} do not match {w} windows x {h} heads of {n} tokens")
        return (x,)


@dataclass(frozen=True)
class MatMul(Op):
    """Activation x activation: ``scale * a @ (b^T if transpose_b else b)``."""
    transpose_b: bool = False
    scale: float = 1.0
    kind: ClassVar[str] = "matmul"
    arity: ClassVar[tuple[int, int]] = (2, 2)

    def out_shapes(self, params, a, b):
        k, n = (b[-1], b[-2]) if self.transpose_b else (b[-2], b[-1])
        if a[-1] != k or a[:-2] != b[:-2]:
            raise GraphError(f"{self.name}: cannot multiply {a} by {b} (transpose_b={self.transpose_b})")
        return (a[:-1] + (n,),)


@dataclass(frozen=True)
class Softmax(Op):
    kind: ClassVar[str] = "softmax"


@dataclass(frozen=True)
class Activation(Op):
    function: str = "gelu_erf"
    kind: ClassVar[str] = "activation"

    def __post_init__(self):
        super().__post_init__()
        if self.function not in ACTIVATIONS:
            raise GraphError(f"{self.name}: activation {self.function!r} is not one of {ACTIVATIONS}")


@dataclass(frozen=True)
class Add(Op):
    kind: ClassVar[str] = "add"
    arity: ClassVar[tuple[int, int]] = (2, 2)

    def out_shapes(self, params, a, b):
        if a != b:
            raise GraphError(f"{self.name}: cannot add {a} and {b}")
        return (a,)


@dataclass(frozen=True)
class Pool(Op):
    """``token``: the token at ``index``; ``avg``: the mean over tokens
    ``num_prefix_tokens:`` (the patch tokens). ``[B,T,D] -> [B,D]``."""
    mode: str = "token"
    index: int = 0
    num_prefix_tokens: int = 0
    kind: ClassVar[str] = "pool"

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in ("token", "avg"):
            raise GraphError(f"{self.name}: pool mode {self.mode!r} is not 'token' or 'avg'")

    def out_shapes(self, params, x):
        return ((x[0], x[2]),)


@dataclass(frozen=True)
class Mean(Op):
    """Elementwise mean of equally shaped tensors (distilled DeiT: the
    average of the class head and the distillation head)."""
    kind: ClassVar[str] = "mean"
    arity: ClassVar[tuple[int, int]] = (2, 8)

    def out_shapes(self, params, *shapes):
        if len(set(shapes)) != 1:
            raise GraphError(f"{self.name}: cannot average shapes {shapes}")
        return (shapes[0],)


@dataclass(frozen=True)
class Exit(Op):
    """An early exit's decision on its logits ``[B, N]``: confidence = max
    softmax probability ``[B, 1]``; an image whose confidence reaches
    ``threshold`` (``threshold >= 1``: never) leaves the batch here, its
    logits becoming its output (see `simulator.walk`). ``after_block``: the
    block whose residual stream the exit reads (its depth is ``after_block + 1``)."""
    threshold: float = 1.0
    after_block: int = 0
    kind: ClassVar[str] = "exit"

    def out_shapes(self, params, logits):
        return ((logits[0], 1),)


@dataclass(frozen=True)
class Graph:
    """Ops in execution order over named tensors, plus their float params.

    ``image_size`` is the (H, W) the graph was lowered for (position
    embeddings are resampled to it); ``in_chans`` the image channels.
    """
    ops: tuple[Op, ...]
    input: str
    outputs: tuple[str, ...]
    params: Mapping[str, Mapping[str, np.ndarray]] = field(compare=False)
    image_size: tuple[int, int] = (224, 224)
    in_chans: int = 3

    def __post_init__(self):
        _check_wiring(self)

    def op(self, name: str) -> Op:
        for o in self.ops:
            if o.name == name:
                return o
        raise KeyError(name)

    def producers(self) -> dict[str, Op]:
        """Tensor name -> the op that produces it."""
        return {t: o for o in self.ops for t in o.outputs}

    def tensor_names(self) -> list[str]:
        return [self.input] + [t for o in self.ops for t in o.outputs]


def _check_wiring(g: Graph) -> None:
    seen = {g.input}
    names = set()
    for o in g.ops:
        if o.name in names:
            raise GraphError(f"op name {o.name!r} used twice")
        names.add(o.name)
        for t in o.inputs:
            if t not in seen:
                raise GraphError(f"{o.name}: reads {t!r} before it is produced")
        for t in o.outputs:
            if t in seen:
                raise GraphError(f"{o.name}: tensor {t!r} is produced twice")
            seen.add(t)
        missing = [p for p in o.param_names if p not in g.params.get(o.name, {})]
        if missing:
            raise GraphError(f"{o.name}: missing params {missing}")
    for t in g.outputs:
        if t not in seen:
            raise GraphError(f"graph output {t!r} is never produced")


def tensor_shapes(graph: Graph, image_size: tuple[int, int] | None = None, batch: int = 1) -> dict[str, Shape]:
    """Shape of every tensor for ``batch`` images of ``image_size`` (default:
    the size the graph was lowered for), in execution order. A size whose
    token count does not match the graph's position embedding raises
    `InputError`."""
    h, w = image_size or graph.image_size
    shapes: dict[str, Shape] = {graph.input: (batch, graph.in_chans, int(h), int(w))}
    for o in graph.ops:
        outs = o.out_shapes(graph.params.get(o.name, {}), *(shapes[t] for t in o.inputs))
        if len(outs) != len(o.outputs):
            raise GraphError(f"{o.name}: produces {len(outs)} tensors, names {len(o.outputs)}")
        shapes.update(zip(o.outputs, (tuple(int(v) for v in s) for s in outs)))
    return shapes


def op_shapes(graph: Graph, image_size: tuple[int, int] | None = None,
              batch: int = 1) -> list[tuple[Op, tuple[Shape, ...], tuple[Shape, ...]]]:
    """``(op, input shapes, output shapes)`` for every op, in execution order."""
    s = tensor_shapes(graph, image_size, batch)
    return [(o, tuple(s[t] for t in o.inputs), tuple(s[t] for t in o.outputs)) for o in graph.ops]


def check_images(graph: Graph, shape: tuple[int, ...]) -> None:
    """Raise `InputError` unless ``shape`` is ``[B, in_chans, H, W]`` at the
    image size the graph was lowered for."""
    shape = tuple(int(v) for v in shape)
    want_h, want_w = graph.image_size
    if len(shape) != 4 or shape[1] != graph.in_chans:
        raise InputError(f"images: expected shape [B, {graph.in_chans}, {want_h}, {want_w}], got {list(shape)}")
    if shape[2:] != (want_h, want_w):
        raise InputError(f"images: the graph was lowered for {want_h}x{want_w} images, got {shape[2]}x{shape[3]}; "
                         f"lower the model again with image_size=({shape[2]}, {shape[3]})")
