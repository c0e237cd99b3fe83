"""`static`: baseline post-training quantization into a frozen `QuantizedViT`.

Per-output-channel symmetric weights, per-tensor symmetric activations
(softmax outputs unsigned at ``2**-a_bits``), calibrated by minmax, percentile
or MSE search on the float model's boundary tensors; a ``residual_bits``
residual stream; patch embed and head operands at ``edge_bits``. Every
rescaling between tensors is frozen here as a dyadic ``(mult, shift)``;
LayerScale gammas are folded into the preceding linear layer.

The other recipes reuse `freeze_linear`, `freeze_layernorm` and friends.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from reference.calibration import BoundaryStats, collect_boundaries
from reference.quantizers import QParams, calibrate, code_range, dyadic, quantize, weight_scales
from reference.recipes.config import RecipeConfig
from reference.vit_float import check_supported, vit_arch
from simulator.errors import InputError
from simulator.int_nonlinear import GELU_FRAC_BITS, LN_FRAC_BITS, EXP_FRAC_BITS
from simulator.qvit import Block, GeluQ, LayerNormQ, Linear, QuantizedViT, Requant, SoftmaxQ

__all__ = ["build", "freeze_linear", "freeze_layernorm", "Scales"]

RESIDUAL_HEADROOM = 1.25   # residual stream / logits: room beyond the calibrated max
ACC_BITS = 32


def _np(t) -> np.ndarray:
    return t.detach().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)


def freeze_linear(w, b, in_scale: float, in_bits: int, w_bits: int, out_scale, out_bits: int,
                  w_method: str, residual_scale: float | None = None, res_bits: int = 0,
                  gamma=None) -> Linear:
    """Quantize ``y = x W^T + b`` (times LayerScale ``gamma``) between frozen scales.

    ``out_scale`` scalar or per-output-channel; ``out_bits = 0`` means a Q12
    fixed-point output (``out_scale = 2**-12``) for the GELU unit.
    """
    w, b = _np(w), (np.zeros(_np(w).shape[0]) if b is None else _np(b))
    if gamma is not None:
        g = _np(gamma)
        w, b = w * g[:, None], b * g
    s_w = weight_scales(w, w_bits, w_method)
    w_q = quantize(w, QParams(s_w[:, None], w_bits)).astype(np.int8)
    acc_scale = in_scale * s_w
    lo, hi = code_range(ACC_BITS)
    bias_q = np.clip(np.floor(b / acc_scale + 0.5), lo, hi).astype(np.int64)
    out_scale = np.broadcast_to(np.asarray(out_scale, dtype=np.float64), s_w.shape).copy()
    mult, shift = dyadic(acc_scale / out_scale)
    res_mult, res_shift = (0, 0)
    if residual_scale is not None:
        rm, rs = dyadic(residual_scale / float(out_scale[0]))
        res_mult, res_shift = int(rm), int(rs)
    return Linear(w_q=w_q, bias_q=bias_q, w_scale=s_w, w_bits=w_bits, in_bits=in_bits,
                  in_scale=float(in_scale), out_mult=mult, out_shift=shift, out_bits=out_bits,
                  out_scale=out_scale, res_mult=res_mult, res_shift=res_shift, res_bits=res_bits)


def freeze_layernorm(ln: torch.nn.LayerNorm, in_scale: float, in_bits: int, out_scale: float,
                     out_bits: int) -> LayerNormQ:
    """Fold gamma, beta and the output scale into ``G_c``, ``B_c`` and one shift.

    ``G_c = round(gamma_c / s_out * 2**K)``, ``B_c = round(beta_c / s_out * 2**(12+K))``,
    ``out_shift = 12 + K`` with K chosen so max |G_c| < 2**30; ``eps_q =
    round(eps * D**2 / s_in**2)`` (the variance is formed as D**2 * var of codes).
    """
    gamma = _np(ln.weight) if ln.weight is not None else np.ones(ln.normalized_shape[0])
    beta = _np(ln.bias) if ln.bias is not None else np.zeros_like(gamma)
    d = gamma.size
    gmax = max(float(np.abs(gamma).max()) / out_scale, 1e-12)
    k = int(np.clip(30 - math.ceil(math.log2(gmax)), 0, 40))
    g = np.floor(gamma / out_scale * 2.0 ** k + 0.5).astype(np.int64)
    bq = np.floor(beta / out_scale * 2.0 ** (LN_FRAC_BITS + k) + 0.5).astype(np.int64)
    eps_q = int(min(math.floor(ln.eps * d * d / in_scale ** 2 + 0.5), 1 << 61))
    return LayerNormQ(eps_q=eps_q, gamma_mult=g, beta_q=bq, out_shift=LN_FRAC_BITS + k,
                      in_bits=in_bits, in_scale=float(in_scale), out_bits=out_bits,
                      out_scale=float(out_scale), gamma=gamma, beta=beta, eps=float(ln.eps))


class Scales:
    """Per-tensor activation scales from boundary statistics, per the recipe."""

    def __init__(self, stats: dict[str, BoundaryStats], cfg: RecipeConfig):
        self.stats, self.cfg = stats, cfg

    def act(self, name: str, bits: int, method: str | None = None) -> float:
        qp = calibrate(self.stats[name].values(), bits, method or self.cfg.act_calibration,
                       percentile=self.cfg.percentile)
        return float(qp.scale)

    def residual(self, name: str) -> float:
        hi = code_range(self.cfg.residual_bits)[1]
        return max(self.stats[name].amax * RESIDUAL_HEADROOM, 1e-8) / hi


def build(model: torch.nn.Module, calib_images: np.ndarray, cfg: RecipeConfig,
          model_name: str = "model") -> QuantizedViT:
    """Calibrate on ``calib_images`` and freeze the static recipe."""
    from reference.recipes.params import SoftmaxOption, parse_static
    sm = {"softmax": cfg.params["softmax"]} if "softmax" in cfg.params else {}
    if parse_static(sm, f"recipe {cfg.label}").softmax != SoftmaxOption():
        raise InputError(f"recipe {cfg.label}: params.softmax: the post-softmax options run on the integer "
                         "graph only; use --engine graph")
    check_supported(model)
    arch = vit_arch(model)
    calib = calib_images[: cfg.calib_images]
    stats = collect_boundaries(model, calib)
    return freeze_static(model, stats, cfg, arch, model_name, len(calib))


def freeze_static(model, stats, cfg: RecipeConfig, arch: dict, model_name: str,
                  n_calib: int) -> QuantizedViT:
    sc = Scales(stats, cfg)
    wb, ab = cfg.w_bits, cfg.a_bits
    eb_w, eb_a = (cfg.edge_bits or wb), (cfg.edge_bits or ab)
    rb, wm = cfg.residual_bits, cfg.weight_calibration
    s_in = sc.act("input", eb_a)
    s_x = sc.residual("x0")
    pe = model.patch_embed.proj
    patch = freeze_linear(pe.weight.flatten(1), pe.bias, s_in, eb_a, eb_w, s_x, rb, wm)
    cls_q = quantize(_np(model.cls_token).reshape(-1), QParams(s_x, rb))
    pos_q = quantize(_np(model.pos_embed)[0], QParams(s_x, rb))
    blocks = []
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}."
        s_n1 = sc.act(p + "norm1", ab)
        norm1 = freeze_layernorm(blk.norm1, s_x, rb, s_n1, ab)
        s_q, s_k, s_v = sc.act(p + "q", ab), sc.act(p + "k", ab), sc.act(p + "v", ab)
        d = arch["embed_dim"]
        qkv_out = np.concatenate([np.full(d, s_q), np.full(d, s_k), np.full(d, s_v)])
        qkv = freeze_linear(blk.attn.qkv.weight, blk.attn.qkv.bias, s_n1, ab, wb, qkv_out, ab, wm)
        sm_in = s_q * s_k * float(blk.attn.scale)
        m, k = dyadic(sm_in * math.log2(math.e) * 2.0 ** EXP_FRAC_BITS)
        softmax = SoftmaxQ(in_mult=int(m), in_shift=int(k), in_scale=sm_in, out_bits=ab)
        s_ao = sc.act(p + "attn_out", ab)
        m, k = dyadic(2.0 ** -ab * s_v / s_ao)
        av = Requant(mult=int(m), shift=int(k), out_bits=ab, out_scale=s_ao)
        s_mid = sc.residual(p + "x_mid")
        proj = freeze_linear(blk.attn.proj.weight, blk.attn.proj.bias, s_ao, ab, wb, s_mid, rb, wm,
                             residual_scale=s_x, res_bits=rb, gamma=_gamma(blk.ls1))
        s_n2 = sc.act(p + "norm2", ab)
        norm2 = freeze_layernorm(blk.norm2, s_mid, rb, s_n2, ab)
        fc1 = freeze_linear(blk.mlp.fc1.weight, blk.mlp.fc1.bias, s_n2, ab, wb,
                            2.0 ** -GELU_FRAC_BITS, 0, wm)
        s_g = sc.act(p + "gelu", ab)
        m, k = dyadic(2.0 ** -GELU_FRAC_BITS / s_g)
        gelu = GeluQ(out_mult=int(m), out_shift=int(k), out_bits=ab, out_scale=s_g)
        s_out = sc.residual(p + "x_out")
        fc2 = freeze_linear(blk.mlp.fc2.weight, blk.mlp.fc2.bias, s_g, ab, wb, s_out, rb, wm,
                            residual_scale=s_mid, res_bits=rb, gamma=_gamma(blk.ls2))
        blocks.append(Block(norm1=norm1, qkv=qkv, softmax=softmax, av=av, proj=proj, norm2=norm2,
                            fc1=fc1, gelu=gelu, fc2=fc2, q_scale=s_q, k_scale=s_k, v_scale=s_v,
                            a_bits=ab))
        s_x = s_out
    s_nf = sc.act("norm", eb_a)
    norm = freeze_layernorm(model.norm, s_x, rb, s_nf, eb_a)
    s_logit = sc.residual("logits")
    head = freeze_linear(model.head.weight, model.head.bias, s_nf, eb_a, eb_w, s_logit, rb, wm)
    meta = {"model": model_name, **arch, "recipe": cfg.recipe, "label": cfg.label,
            "w_bits": wb, "a_bits": ab, "residual_bits": rb, "edge_bits": cfg.edge_bits,
            "calibration": {"weights": wm, "activations": cfg.act_calibration,
                            "images": int(n_calib)}}
    return QuantizedViT(meta=meta, in_scale=s_in, in_bits=eb_a, patch_embed=patch, x0_scale=sc.residual("x0"),
                        cls_q=cls_q, pos_q=pos_q, blocks=tuple(blocks), norm=norm, head=head,
                        logit_scale=s_logit, residual_bits=rb)


def _gamma(ls):
    return None if ls is None or isinstance(ls, torch.nn.Identity) else ls.gamma
