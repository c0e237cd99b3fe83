"""The float op set of the graph walk: timm's own float function, op by op.

`FloatOps(graph, dtype)` converts the graph's float64 params to torch once
and computes every op kind of `simulator.ir` the way timm's modules do
(``F.linear``, ``F.layer_norm``, ``softmax(dim=-1)``, ``F.gelu`` with
``approximate='none'|'tanh'``, quick-GELU ``x * sigmoid(1.702 x)``). With
``torch.float64`` the walk agrees with timm's float64 forward to rounding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from simulator import ir
from simulator.walk import Leave, walk
from simulator.windows import gather, merge_window_heads, split_window_heads, token_index

__all__ = ["FloatOps", "float_forward"]


class FloatOps:
    """Torch kernels for every op kind, in ``dtype`` (float32 or float64)."""

    def __init__(self, graph: ir.Graph, dtype: torch.dtype = torch.float64):
        self.dtype = dtype
        self.params = {op: {k: torch.tensor(v, dtype=dtype) for k, v in ps.items()}
                       for op, ps in graph.params.items()}

    def patchify(self, op: ir.Patchify, images):
        ph, pw = op.patch_size
        b, c, h, w = images.shape
        gh, gw = op.grid(h, w)
        x = images.to(self.dtype)
        if op.pad:
            x = F.pad(x, (0, gw * pw - w, 0, gh * ph - h))
        x = x[:, :, :gh * ph, :gw * pw].reshape(b, c, gh, ph, gw, pw)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * ph * pw)

    def linear(self, op: ir.Linear, x, residual=None):
        p = self.params[op.name]
        y = F.linear(x, p["weight"], p["bias"])
        return y if residual is None else residual + y

    def head(self, op: ir.Head, x):
        return self.linear(op, x)

    def layer_norm(self, op: ir.LayerNorm, x):
        p = self.params[op.name]
        return F.layer_norm(x, (x.shape[-1],), p["weight"], p["bias"], op.eps)

    def token_concat(self, op: ir.TokenConcat, x):
        tokens = self.params[op.name]["tokens"]
        return torch.cat([tokens.expand(x.shape[0], -1, -1), x], dim=1)

    def add_const(self, op: ir.AddConst, x):
        return x + self.params[op.name]["value"]

    def split(self, op: ir.Split, x):
        return tuple(torch.split(x, list(op.sizes), dim=-1))

    def split_heads(self, op: ir.SplitHeads, x):
        if op.windows > 1:
            return split_window_heads(op, x)
        b, t, c = x.shape
        n, h = len(op.outputs), op.num_heads
        parts = x.reshape(b, t, n, h, c // (n * h)).permute(2, 0, 3, 1, 4)
        return tuple(parts.unbind(0))

    def merge_heads(self, op: ir.MergeHeads, x):
        if op.windows > 1:
            return merge_window_heads(op, x)
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    def gather_tokens(self, op: ir.GatherTokens, x):
        return gather(x, torch.from_numpy(token_index(op)))

    def window_bias(self, op: ir.WindowBias, x):
        p = self.params[op.name]
        b, wh, n, _ = x.shape
        h = op.num_heads
        y = x.reshape(b, wh // h, h, n, n) + p["bias"][None, None] + p["mask"][None, :, None]
        return y.reshape(b, wh, n, n)

    def matmul(self, op: ir.MatMul, a, b):
        y = a @ (b.transpose(-2, -1) if op.transpose_b else b)
        return y if op.scale == 1.0 else y * op.scale

    def softmax(self, op: ir.Softmax, x):
        return x.softmax(dim=-1)

    def activation(self, op: ir.Activation, x):
        if op.function == "gelu_erf":
            return F.gelu(x)
        if op.function == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        return x * torch.sigmoid(1.702 * x)      # quick_gelu

    def add(self, op: ir.Add, a, b):
        return a + b

    def pool(self, op: ir.Pool, x):
        if op.mode == "token":
            return x[:, op.index]
        return x[:, op.num_prefix_tokens:].mean(dim=1)

    def exit(self, op: ir.Exit, logits):
        """Confidence = max softmax probability; leave when it reaches ``threshold`` (< 1)."""
        conf = torch.softmax(logits.double(), dim=-1).amax(-1)
        leave = (conf >= op.threshold).numpy() if op.threshold < 1 else np.zeros(len(conf), dtype=bool)
        return Leave(conf[:, None].to(logits.dtype), leave)

    def mean(self, op: ir.Mean, *xs):
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return total / len(xs)


@torch.no_grad()
def float_forward(graph: ir.Graph, images, dtype: torch.dtype = torch.float64, keep=None):
    """The graph's float function on ``images`` [B, C, H, W] (a tensor or a
    numpy array) of the size the graph was lowered for; returns the output
    tensor (a tuple when there are several)."""
    x = torch.as_tensor(images)
    ir.check_images(graph, x.shape)
    out = walk(graph, FloatOps(graph, dtype), x, keep=keep)
    values = tuple(out[name] for name in graph.outputs)
    return values[0] if len(values) == 1 else values
