"""PyTorch fake-quant executor of a frozen `QuantizedViT`.

Works on int64 tensors of codes and float64 tensors that hold exact
integers (GEMMs run in float64, exact while |acc| < 2**53, which the code
widths guarantee), applying the very fixed-point primitives of
`simulator.fixedpoint` / `simulator.int_nonlinear` vectorised over tensors.
In ``nonlinear="integer"`` mode its every boundary code equals the numba
simulator's; ``nonlinear="float"`` replaces softmax, GELU and LayerNorm by
their float versions between the same quantizers (as the papers evaluate).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from reference import two_scaled_fq as v2sf
from reference.vit_float import patchify
from reference.tensor_primitives import isqrt, requantize, round_half_up, saturate
from simulator.exit_graph import ExitTracker, finish_trace
from simulator.graph import static_layers
from simulator.inputs import check_images
from reference.tensor_primitives import (GELU_FRAC_BITS, GELU_INPUT_LIMIT, SOFTMAX_RECIP_BITS, LN_RECIP_BITS,
                                     exp2_neg, gelu_q12, ln_affine, ln_normalize, softmax_scale_codes)
from simulator.qvit import LayerNormQ, Linear, QuantizedViT
from simulator.results import RunResult
from simulator.trace import Trace

__all__ = ["FakeQuantExecutor"]

ACC_LO, ACC_HI = -(1 << 31), (1 << 31) - 1


def exact_int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of integer-valued tensors, exactly (int64, or int32 from int_mm).

    The cheapest exact engine for the operands' actual magnitudes (measured,
    one pass each): oneDNN int8 ``torch._int_mm`` for 2-D products of int8-range
    codes (int32 cannot overflow for K < 2**17); float32 while every partial
    sum stays below 2**24 (K * max|a| * max|b|); float64 below 2**53; else an
    int64 matmul.
    """
    amax, bmax = int(a.abs().max()) if a.numel() else 0, int(b.abs().max()) if b.numel() else 0
    k = a.shape[-1]
    lead = a.shape[:-1]
    if (b.dim() == 2 and hasattr(torch, "_int_mm") and k < (1 << 17) and k % 8 == 0 and b.shape[1] % 8 == 0
            and a.numel() and int(a.min()) >= -128 and amax <= 127
            and int(b.min()) >= -128 and bmax <= 127):
        a2 = a.reshape(-1, k).to(torch.int8)
        m = a2.shape[0]
        if m <= 16:
            a2 = torch.nn.functional.pad(a2, (0, 0, 0, 17 - m))
        b8 = b if b.dtype == torch.int8 and b.is_contiguous() else b.to(torch.int8).contiguous()
        return torch._int_mm(a2, b8)[:m].reshape(*lead, b.shape[1])   # int32: exact, promotes on use
    bound = k * max(amax, 1) * max(bmax, 1)
    if bound < (1 << 24):
        return (a.float() @ b.float()).int()          # |sums| < 2**24: exact, and inside int32
    if bound < (1 << 53):
        return (a.double() @ b.double()).long()
    return a.long() @ b.long()


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def _srange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def linear_output_stage(acc, bias, mult, shift, res, res_mult, res_shift, lo, hi):
    """Bias (int32-saturated, overflows counted), dyadic requantization, fused
    residual, saturation; returns (codes, number of saturated accumulators)."""
    acc = acc + bias
    over = ((acc < ACC_LO) | (acc > ACC_HI)).sum()
    y = requantize(saturate(acc, ACC_LO, ACC_HI), mult, shift)
    if res is not None:
        y = y + requantize(res, res_mult, res_shift)
    return saturate(y, lo, hi), over


def layernorm_stage(x, eps_q, gamma_mult, beta_q, out_shift, lo, hi):
    """Integer LayerNorm over the last axis (`simulator.int_nonlinear`)."""
    d = x.shape[-1]
    s1 = x.sum(-1, keepdim=True)
    v = d * (x * x).sum(-1, keepdim=True) - s1 * s1
    std = isqrt(v + eps_q)
    std = std + (std < 1)
    recip = (1 << LN_RECIP_BITS) // std
    return ln_affine(ln_normalize(d * x - s1, recip), gamma_mult, beta_q, out_shift, lo, hi)


def softmax_stage(acc, in_mult, in_shift, out_bits):
    """Integer softmax of each row (`simulator.int_nonlinear`)."""
    t = requantize(acc - acc.amax(-1, keepdim=True), in_mult, in_shift)
    e = exp2_neg(-t)
    recip = (1 << SOFTMAX_RECIP_BITS) // e.sum(-1, keepdim=True)
    return softmax_scale_codes(e, recip, out_bits)


def gelu_stage(h, out_mult, out_shift, lo, hi):
    """Integer GELU of Q12 values, requantized to codes."""
    return saturate(requantize(gelu_q12(h), out_mult, out_shift), lo, hi)


_STAGES = ("linear_output_stage", "layernorm_stage", "softmax_stage", "gelu_stage")


class FakeQuantExecutor:
    """``FakeQuantExecutor(qvit).run(images)`` -> `RunResult`.

    ``compile=True`` runs the integer stages (GEMM output stage, LayerNorm,
    softmax, GELU: the module-level ``*_stage`` functions) through
    ``torch.compile`` (TorchInductor fuses each int64 chain into one loop;
    integer ops, so results are identical — tested). About 2.4x faster on
    DeiT-S; the first call compiles for ~1-2 minutes (cached on disk after).
    """

    def __init__(self, qvit: QuantizedViT, nonlinear: Literal["integer", "float"] = "integer",
                 compile: bool = False):
        if nonlinear not in ("integer", "float"):
            raise ValueError(f"nonlinear must be 'integer' or 'float', got {nonlinear!r}")
        self.q, self.nonlinear = qvit, nonlinear
        self.overflows: dict[str, int] = {}
        self.compiled = compile
        self._params: dict = {}
        # the integer stages, eager or fused by TorchInductor (same source, exact integer ops;
        # scalars are passed as 0-d tensors then, so one graph serves every layer)
        fns = {n: globals()[n] for n in _STAGES}
        self._stage = {n: torch.compile(f, dynamic=True) for n, f in fns.items()} if compile else fns
        self._s = (lambda v: torch.tensor(v, dtype=torch.int64)) if compile else (lambda v: v)

    # --- operators ----------------------------------------------------------
    def _gemm(self, name: str, a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
        """Exact int accumulator of ``a @ b_t`` saturated to int32 (counted)."""
        acc = exact_int_matmul(a, b_t)
        if acc.dtype == torch.int32:      # int_mm / bounded float32: inside int32 by construction;
            return acc.long()             # widened, as every later multiply needs 64 bits
        self._count(name, int(((acc < ACC_LO) | (acc > ACC_HI)).sum()))
        return saturate(acc, ACC_LO, ACC_HI)

    def _count(self, name: str, n: int) -> None:
        if n:
            self.overflows[name] = self.overflows.get(name, 0) + n

    def _linear(self, name: str, lin: Linear, x: torch.Tensor, res: torch.Tensor | None = None):
        if id(lin) not in self._params:   # int8 [k, n] weights and int64 output-stage vectors, once
            self._params[id(lin)] = (torch.from_numpy(np.ascontiguousarray(lin.w_q.T, dtype=np.int8)),
                                     _t(lin.bias_q), _t(lin.out_mult), _t(lin.out_shift))
        w8, bias, mult, shift = self._params[id(lin)]
        acc = self._gemm(name, x, w8)
        lo, hi = (-GELU_INPUT_LIMIT, GELU_INPUT_LIMIT) if lin.out_bits == 0 else _srange(lin.out_bits)
        s = self._s
        y, over = self._stage["linear_output_stage"](acc, bias, mult, shift, res,
                                                      s(lin.res_mult), s(lin.res_shift), s(lo), s(hi))
        self._count(name, int(over))
        return y

    def _layernorm(self, ln: LayerNormQ, x: torch.Tensor) -> torch.Tensor:
        lo, hi = _srange(ln.out_bits)
        if self.nonlinear == "float":
            y = F.layer_norm(x.double() * ln.in_scale, (x.shape[-1],), torch.as_tensor(ln.gamma),
                             torch.as_tensor(ln.beta), ln.eps)
            return saturate(round_half_up(y / ln.out_scale).long(), lo, hi)
        s = self._s
        return self._stage["layernorm_stage"](x, s(ln.eps_q), _t(ln.gamma_mult), _t(ln.beta_q), s(ln.out_shift),
                                              s(lo), s(hi))

    def _softmax(self, sm, acc: torch.Tensor) -> torch.Tensor:
        if sm.ratio_shift:
            return v2sf.softmax_words(sm, acc, self.nonlinear)
        if self.nonlinear == "float":
            p = torch.softmax(acc.double() * sm.in_scale, dim=-1)
            return saturate(round_half_up(p * (1 << sm.out_bits)).long(), 0, (1 << sm.out_bits) - 1)
        s = self._s
        return self._stage["softmax_stage"](acc, s(sm.in_mult), s(sm.in_shift), s(sm.out_bits))

    def _gelu(self, g, fc1: Linear, h: torch.Tensor) -> torch.Tensor:
        if g.ratio_shift:
            return v2sf.gelu_words(g, h, self.nonlinear)
        lo, hi = _srange(g.out_bits)
        if self.nonlinear == "float":
            y = F.gelu(h.double() * 2.0 ** -GELU_FRAC_BITS)
            return saturate(round_half_up(y / g.out_scale).long(), lo, hi)
        s = self._s
        return self._stage["gelu_stage"](h, s(g.out_mult), s(g.out_shift), s(lo), s(hi))

    def _exit(self, j: int, e, x: torch.Tensor, keep):
        """Exit head ``j`` on the class token: logit codes and the leave decision."""
        n = self._layernorm(e.norm, x[:, 0])
        keep(f"exits.{j}.norm", n)
        lg = self._linear(f"exits.{j}.head", e.head, n)
        keep(f"exits.{j}.logits", lg)
        conf = self._softmax(e.confidence, lg).amax(-1)
        keep(f"exits.{j}.confidence", conf[:, None])
        return lg, (conf >= e.threshold_q).numpy()

    # --- forward ------------------------------------------------------------
    def _forward(self, images: torch.Tensor, codes: dict[str, list]):
        if "igq" in self.q.extras:   # IGQ-ViT grouped activations
            from reference.igq_fakequant import igq_forward
            return igq_forward(self, images, codes)
        q = self.q
        m = q.meta
        tracker = ExitTracker(q, len(images))
        def keep_all(name, t):
            codes.setdefault(name, []).append(t)
        keep = tracker.wrap(keep_all)
        p = patchify(images.double(), m["patch_size"])
        x = saturate(round_half_up(p / q.in_scale).long(), *_srange(q.in_bits))
        keep("input", x)
        rb = _srange(q.residual_bits)
        pt = self._linear("patch_embed", q.patch_embed, x)
        pos = _t(q.pos_q)
        cls = (_t(q.cls_q) + pos[0]).expand(pt.shape[0], 1, -1)
        x = saturate(torch.cat([cls, pt + pos[1:]], dim=1), *rb)
        keep("x0", x)
        if "scale_predictor" in q.extras:   # ScalePredictor: per-image scales in every block
            from reference.fakequant_predicted import predicted_blocks
            return predicted_blocks(self, x, keep)
        h, hd = m["num_heads"], m["head_dim"]
        for i, b in enumerate(q.blocks):
            pre = f"blocks.{i}."
            n1 = self._layernorm(b.norm1, x)
            keep(pre + "norm1", n1)
            bsz, t, d = n1.shape
            qkv = self._linear(pre + "attn.qkv", b.qkv, n1).reshape(bsz, t, 3, h, hd).permute(2, 0, 3, 1, 4)
            qh, kh, vh = qkv[0], qkv[1], qkv[2]
            keep(pre + "q", qh), keep(pre + "k", kh), keep(pre + "v", vh)
            attn = self._softmax(b.softmax, self._gemm(pre + "attn.qk", qh, kh.transpose(-2, -1)))
            keep(pre + "attn", attn)
            o = requantize(self._gemm(pre + "attn.av", v2sf.softmax_operand(b.softmax, attn), vh), b.av.mult, b.av.shift)
            o = saturate(o, *_srange(b.av.out_bits)).transpose(1, 2).reshape(bsz, t, d)
            keep(pre + "attn_out", o)
            x = self._linear(pre + "attn.proj", b.proj, o, res=x)
            keep(pre + "x_mid", x)
            n2 = self._layernorm(b.norm2, x)
            keep(pre + "norm2", n2)
            f1 = self._linear(pre + "mlp.fc1", b.fc1, n2)
            keep(pre + "fc1", f1)
            g = self._gelu(b.gelu, b.fc1, f1)
            keep(pre + "gelu", g)
            x = self._linear(pre + "mlp.fc2", b.fc2, v2sf.gelu_operand(b.gelu, g), res=x)
            keep(pre + "x_out", x)
            for j, e in tracker.exits_after(i):
                lg, leave = self._exit(j, e, x, keep)
                x = tracker.leave(e, leave, lg, x, self.overflows)
        nf = self._layernorm(q.norm, x[:, 0])
        keep("norm", nf)
        logits = tracker.output(self._linear("head", q.head, nf))
        tracker.finish(self.overflows)
        keep_all("logits", logits)
        self._exit_depth.append(tracker.depth)
        if q.exits:
            keep_all("exit_depth", torch.as_tensor(tracker.depth[:, None]))
        return logits

    @torch.no_grad()
    def run(self, images, batch_size: int = 64, keep_codes: bool = True) -> RunResult:
        """Execute on float images [B, C, H, W] (the model's preprocessing applied)."""
        images = torch.as_tensor(check_images(images, self.q.meta))
        self.overflows, self._exit_depth = {}, []
        codes: dict[str, list] = {}
        logits = []
        for s in range(0, len(images), batch_size):
            c: dict[str, list] = {} if keep_codes else {}
            logits.append(self._forward(images[s:s + batch_size], c))
            if keep_codes:
                for k, v in c.items():
                    codes.setdefault(k, []).extend(t.numpy() for t in v)
        lc = torch.cat(logits).numpy() if logits else np.zeros((0, self.q.meta["num_classes"]), np.int64)
        trace = Trace(model=self.q.meta["model"], recipe=self.q.meta["label"], layers=static_layers(self.q),
                      n_images=len(images), overflows=dict(self.overflows))
        # forwards without exit tracking (e.g. IGQ's) ran every image to full depth
        depth = (np.concatenate(self._exit_depth) if self._exit_depth
                 else np.full(len(images), self.q.meta["depth"], dtype=np.int64))
        scale = finish_trace(self.q, trace, depth)
        return RunResult(logits=lc * scale[:, None], logit_codes=lc, trace=trace,
                         codes={k: np.concatenate(v) for k, v in codes.items()})
