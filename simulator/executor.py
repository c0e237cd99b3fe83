"""The numba integer executor of a frozen `QuantizedViT`.

Integer arrays only (int8/int16 codes, int64 accumulators clamped to int32):
no float enters the datapath after the host-side input quantization
(``round_half_up(patch / in_scale)``, the same expression the fake-quant
executor evaluates). GEMMs go through an exact backend
(`simulator.kernels.gemm`); every other op is a jitted kernel.
"""

from __future__ import annotations

import numpy as np

from simulator.fixedpoint import saturate
from simulator.exit_graph import ExitTracker, finish_trace
from simulator.graph import static_layers
from simulator.inputs import check_images
from simulator.kernels.gemm import int_matmul, saturate_acc
from simulator.kernels.nonlinear import int_layernorm, int_softmax
from simulator.kernels.two_scaled import gelu_operand, gelu_stage, softmax_operand, softmax_stage
from simulator.kernels.output_stage import code_dtype, linear_output, quantize_patches, requant_output
from simulator.qvit import Linear, QuantizedViT
from simulator.results import RunResult
from simulator.trace import Trace
from simulator.int_nonlinear import GELU_INPUT_LIMIT

__all__ = ["IntegerExecutor", "patchify"]


def patchify(images: np.ndarray, patch_size) -> np.ndarray:
    """[B, C, H, W] -> [B, Np, C*ph*pw], the conv weight's flattening order."""
    ph, pw = patch_size
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // ph, ph, w // pw, pw)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(b, (h // ph) * (w // pw), c * ph * pw)


def _srange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _mag(bits: int, signed: bool = True) -> int:
    """Largest code magnitude of a ``bits``-wide code."""
    return (1 << (bits - 1)) if signed else (1 << bits) - 1


class IntegerExecutor:
    """``IntegerExecutor(qvit, gemm_backend="auto").run(images)`` -> `RunResult`.

    ``gemm_backend``: one of `simulator.kernels.gemm.BACKENDS`; all exact.
    """

    def __init__(self, qvit: QuantizedViT, gemm_backend: str = "auto"):
        self.q, self.backend = qvit, gemm_backend
        self.overflows: dict[str, int] = {}
        self._wt = {}   # cached transposed weights per linear

    def _count(self, name: str, n: int) -> None:
        if n:
            self.overflows[name] = self.overflows.get(name, 0) + n

    def _gemm(self, name, a, b, a_bits, b_bits, a_signed=True, a_max=None):
        a_max = _mag(a_bits, a_signed) if a_max is None else a_max   # decoded two-scaled operands are wider
        acc = int_matmul(a, b, a_max, _mag(b_bits), self.backend)
        acc, over = saturate_acc(acc)
        self._count(name, over)
        return acc

    def _linear(self, name: str, lin: Linear, x: np.ndarray, res: np.ndarray | None = None, a_max=None):
        if id(lin) not in self._wt:
            self._wt[id(lin)] = np.ascontiguousarray(lin.w_q.T)
        lead = x.shape[:-1]
        acc = self._gemm(name, x.reshape(-1, x.shape[-1]), self._wt[id(lin)], lin.in_bits, lin.w_bits,
                         a_max=a_max)
        if lin.out_bits == 0:
            lo, hi, dt = -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT, np.int32
        else:
            (lo, hi), dt = _srange(lin.out_bits), code_dtype(lin.out_bits)
        r = None if res is None else res.reshape(-1, res.shape[-1])
        out, over = linear_output(acc, lin.bias_q, lin.out_mult, lin.out_shift, lo, hi, dt,
                                  res=r, res_mult=lin.res_mult, res_shift=lin.res_shift)
        self._count(name, over)
        return out.reshape(*lead, -1)

    def _layernorm(self, ln, x):
        lo, hi = _srange(ln.out_bits)
        return int_layernorm(x, ln.eps_q, ln.gamma_mult, ln.beta_q, ln.out_shift, lo, hi, code_dtype(ln.out_bits))

    def _exit(self, j: int, e, x, keep):
        """Exit head ``j`` on the class token: logit codes and the leave decision."""
        n = self._layernorm(e.norm, np.ascontiguousarray(x[:, 0]))
        keep(f"exits.{j}.norm", n)
        lg = self._linear(f"exits.{j}.head", e.head, n)
        keep(f"exits.{j}.logits", lg)
        c = e.confidence
        conf = int_softmax(lg, c.in_mult, c.in_shift, c.out_bits).max(axis=-1).astype(np.int64)
        keep(f"exits.{j}.confidence", conf[:, None])
        return lg, conf >= e.threshold_q

    def _forward(self, images: np.ndarray, keep):
        if "igq" in self.q.extras:   # IGQ-ViT grouped activations
            from simulator.igq_executor import igq_forward
            return igq_forward(self, images, keep)
        q, m = self.q, self.q.meta
        tracker = ExitTracker(q, len(images))
        keep_all, keep = keep, tracker.wrap(keep)
        x = quantize_patches(images, m["patch_size"], q.in_scale, q.in_bits)
        keep("input", x)
        rb = _srange(q.residual_bits)
        rdt = code_dtype(q.residual_bits)
        pt = self._linear("patch_embed", q.patch_embed, x).astype(np.int64)
        bsz = pt.shape[0]
        x = np.empty((bsz, pt.shape[1] + 1, pt.shape[2]), dtype=np.int64)
        x[:, 0] = q.cls_q + q.pos_q[0]
        x[:, 1:] = pt + q.pos_q[1:]
        x = saturate(x, *rb).astype(rdt)
        keep("x0", x)
        if "scale_predictor" in q.extras:   # ScalePredictor: per-image scales in every block
            from simulator.predicted_forward import predicted_blocks
            return predicted_blocks(self, x, keep)
        h, hd = m["num_heads"], m["head_dim"]
        for i, b in enumerate(q.blocks):
            pre = f"blocks.{i}."
            ab = b.a_bits
            n1 = self._layernorm(b.norm1, x)
            keep(pre + "norm1", n1)
            _, t, d = n1.shape
            qkv = self._linear(pre + "attn.qkv", b.qkv, n1).reshape(bsz, t, 3, h, hd).transpose(2, 0, 3, 1, 4)
            qh, kh, vh = qkv[0], qkv[1], qkv[2]
            keep(pre + "q", qh), keep(pre + "k", kh), keep(pre + "v", vh)
            s = self._gemm(pre + "attn.qk", qh, kh.transpose(0, 1, 3, 2), ab, ab)
            attn = softmax_stage(b.softmax, s)
            keep(pre + "attn", attn)
            a_op, a_max = softmax_operand(b.softmax, attn)
            o = self._gemm(pre + "attn.av", a_op, vh, b.softmax.out_bits, ab, a_signed=False, a_max=a_max)
            o = requant_output(o, b.av.mult, b.av.shift, *_srange(b.av.out_bits), code_dtype(b.av.out_bits))
            o = np.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(bsz, t, d)
            keep(pre + "attn_out", o)
            x = self._linear(pre + "attn.proj", b.proj, o, res=x)
            keep(pre + "x_mid", x)
            n2 = self._layernorm(b.norm2, x)
            keep(pre + "norm2", n2)
            f1 = self._linear(pre + "mlp.fc1", b.fc1, n2)
            keep(pre + "fc1", f1)
            g = gelu_stage(b.gelu, f1, *_srange(b.gelu.out_bits), code_dtype(b.gelu.out_bits))
            keep(pre + "gelu", g)
            g_op, g_max = gelu_operand(b.gelu, g)
            x = self._linear(pre + "mlp.fc2", b.fc2, g_op, res=x, a_max=g_max)
            keep(pre + "x_out", x)
            for j, e in tracker.exits_after(i):
                lg, leave = self._exit(j, e, x, keep)
                x = tracker.leave(e, leave, lg, x, self.overflows)
            bsz = x.shape[0]
        nf = self._layernorm(q.norm, np.ascontiguousarray(x[:, 0]))
        keep("norm", nf)
        logits = tracker.output(self._linear("head", q.head, nf))
        tracker.finish(self.overflows)
        keep_all("logits", logits)
        self._exit_depth.append(tracker.depth)
        if q.exits:
            keep_all("exit_depth", tracker.depth[:, None])
        return logits

    def run(self, images, batch_size: int = 64, keep_codes: bool = True) -> RunResult:
        """Execute on float images [B, C, H, W] (the model's preprocessing applied)."""
        images = check_images(images, self.q.meta)
        self.overflows, self._exit_depth = {}, []
        codes: dict[str, list] = {}

        def keep(name, arr):
            if keep_codes:
                codes.setdefault(name, []).append(np.asarray(arr).astype(np.int64))

        logits = [self._forward(images[s:s + batch_size], keep) for s in range(0, len(images), batch_size)]
        lc = (np.concatenate(logits).astype(np.int64) if logits
              else np.zeros((0, self.q.meta["num_classes"]), np.int64))
        trace = Trace(model=self.q.meta["model"], recipe=self.q.meta["label"], layers=static_layers(self.q),
                      n_images=len(images), overflows=dict(self.overflows))
        # forwards without exit tracking (e.g. IGQ's) ran every image to full depth
        depth = (np.concatenate(self._exit_depth) if self._exit_depth
                 else np.full(len(images), self.q.meta["depth"], dtype=np.int64))
        scale = finish_trace(self.q, trace, depth)
        return RunResult(logits=lc * scale[:, None], logit_codes=lc, trace=trace,
                         codes={k: np.concatenate(v) for k, v in codes.items()})
