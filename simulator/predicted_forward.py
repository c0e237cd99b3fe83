"""The numba executor's blocks for a ScalePredictor model (per-image scales).

Called by `IntegerExecutor._forward` right after ``x0`` when the model holds
``extras["scale_predictor"]``. GEMMs run batched (they see codes only); every
output stage that reads or writes a predicted-scale tensor runs per image with
that image's multipliers (`simulator.predicted_scales.block_params`), through
the same kernels the static path uses. ``executor.log2_override`` (an int64
array [B, depth*7], Q15) replaces the predictor's output -- used to apply the
per-image oracle scales through the identical integer datapath.
"""

from __future__ import annotations

import numpy as np

from simulator.int_nonlinear import GELU_INPUT_LIMIT
from simulator.kernels.nonlinear import int_gelu, int_layernorm, int_softmax
from simulator.kernels.output_stage import code_dtype, linear_output, requant_output
from simulator.predicted_scales import N_PER_BLOCK, np_block_params, predict_log2

__all__ = ["predicted_blocks"]


def _srange(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _linear(ex, name, lin, x, mult, shift, res=None):
    """Batched GEMM, per-image output stage with image i's ``mult[i]``/``shift[i]``."""
    bsz, t = x.shape[0], x.shape[1]
    wt = ex._wt.setdefault(id(lin), np.ascontiguousarray(lin.w_q.T))
    acc = ex._gemm(name, x.reshape(-1, x.shape[-1]), wt, lin.in_bits, lin.w_bits).reshape(bsz, t, -1)
    if lin.out_bits == 0:
        lo, hi, dt = -GELU_INPUT_LIMIT, GELU_INPUT_LIMIT, np.int32
    else:
        (lo, hi), dt = _srange(lin.out_bits), code_dtype(lin.out_bits)
    out = np.empty(acc.shape, dtype=dt)
    for i in range(bsz):
        r = None if res is None else res[i]
        out[i], over = linear_output(acc[i], lin.bias_q, np.broadcast_to(mult[i], (acc.shape[2],)).copy(),
                                     np.broadcast_to(shift[i], (acc.shape[2],)).copy(), lo, hi, dt,
                                     res=r, res_mult=lin.res_mult, res_shift=lin.res_shift)
        ex._count(name, over)
    return out


def _layernorm(ln, x, gamma, beta, shift):
    lo, hi = _srange(ln.out_bits)
    return np.stack([int_layernorm(x[i], ln.eps_q, gamma[i], beta[i], int(shift[i, 0]), lo, hi,
                                   code_dtype(ln.out_bits)) for i in range(len(x))])


def predicted_blocks(ex, x: np.ndarray, keep) -> np.ndarray:
    """Blocks, final norm and head of ``ex.q`` on residual codes ``x`` [B, T, D]; returns logit codes."""
    q, m = ex.q, ex.q.meta
    override = getattr(ex, "log2_override", None)
    d = np.asarray(override, dtype=np.int64) if override is not None else \
        predict_log2(x, q.extras["scale_predictor"])[1]
    h, hd = m["num_heads"], m["head_dim"]
    bsz = x.shape[0]
    for i, b in enumerate(q.blocks):
        pre = f"blocks.{i}."
        ab = b.a_bits
        p = np_block_params(b, d[:, i * N_PER_BLOCK:(i + 1) * N_PER_BLOCK])
        n1 = _layernorm(b.norm1, x, p.n1_gamma, p.n1_beta, p.n1_shift)
        keep(pre + "norm1", n1)
        _, t, dim = n1.shape
        qkv = _linear(ex, pre + "attn.qkv", b.qkv, n1, p.qkv_mult, p.qkv_shift)
        qkv = qkv.reshape(bsz, t, 3, h, hd).transpose(2, 0, 3, 1, 4)
        qh, kh, vh = qkv[0], qkv[1], qkv[2]
        keep(pre + "q", qh), keep(pre + "k", kh), keep(pre + "v", vh)
        s = ex._gemm(pre + "attn.qk", qh, kh.transpose(0, 1, 3, 2), ab, ab)
        attn = np.stack([int_softmax(s[j], int(p.sm_mult[j, 0]), int(p.sm_shift[j, 0]), b.softmax.out_bits)
                         for j in range(bsz)])
        keep(pre + "attn", attn)
        o = ex._gemm(pre + "attn.av", attn, vh, b.softmax.out_bits, ab, a_signed=False)
        lo, hi = _srange(b.av.out_bits)
        o = np.stack([requant_output(o[j], int(p.av_mult[j, 0]), int(p.av_shift[j, 0]), lo, hi,
                                     code_dtype(b.av.out_bits)) for j in range(bsz)])
        o = np.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(bsz, t, dim)
        keep(pre + "attn_out", o)
        x = _linear(ex, pre + "attn.proj", b.proj, o, p.proj_mult, p.proj_shift, res=x)
        keep(pre + "x_mid", x)
        n2 = _layernorm(b.norm2, x, p.n2_gamma, p.n2_beta, p.n2_shift)
        keep(pre + "norm2", n2)
        f1 = _linear(ex, pre + "mlp.fc1", b.fc1, n2, p.fc1_mult, p.fc1_shift)
        keep(pre + "fc1", f1)
        lo, hi = _srange(b.gelu.out_bits)
        g = np.stack([int_gelu(f1[j], int(p.gelu_mult[j, 0]), int(p.gelu_shift[j, 0]), lo, hi,
                               code_dtype(b.gelu.out_bits)) for j in range(bsz)])
        keep(pre + "gelu", g)
        x = _linear(ex, pre + "mlp.fc2", b.fc2, g, p.fc2_mult, p.fc2_shift, res=x)
        keep(pre + "x_out", x)
    nf = ex._layernorm(q.norm, np.ascontiguousarray(x[:, 0]))
    keep("norm", nf)
    logits = ex._linear("head", q.head, nf)
    keep("logits", logits)
    return logits
