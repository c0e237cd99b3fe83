"""`tsptq`: TSPTQ-ViT post-training quantization (Tai & Wu, 2023) into a frozen `QuantizedViT`.

Built on the `static` recipe (same weights, residual stream, edge layers),
then three changes per block:

* **V-2SF, post-softmax**: two-scaled words (`simulator.two_scaled`), fine
  scale ``2**-f``, coarse ``2**-(f-r)``; ``(f, r)`` searched per tensor.
  Both scales are powers of two because the integer softmax already holds the
  probability in Q62: each code is one rounding shift of it. The attn·V
  requantizer is refrozen for the fine scale.
* **V-2SF, post-GELU**: fine scale ``s`` (any real, frozen as a dyadic
  multiplier of the Q12 GELU value) with a signed fine region for GELU's small
  negative part, coarse ``s * 2**r`` unsigned; ``(s, r)`` searched per
  tensor; fc2 refrozen for the fine scale.
* **O-2SF, LayerNorm outputs** (norm1, norm2): channels whose calibration
  range exceeds ``threshold * median`` of the channel ranges get the coarse
  scale ``s * 2**r_o`` (FQ-ViT's power-of-two factor with two levels). The
  LayerNorm output stage writes them at that scale by folding ``2**-r_o``
  into its per-channel ``G_c``/``B_c`` (`freeze_layernorm`; the same integer
  as a per-channel output shift up to the rounding of ``G_c``, a 2**-30
  relative difference). The next linear (qkv, fc1) absorbs the factor
  ``2**r_o`` into its weight columns *before* per-output-channel weight
  quantization (RepQ-ViT's reparameterisation): the weight codes stay
  ``w_bits`` wide and no runtime shift remains. The abstract does not say
  where TSPTQ-ViT folds it; the other choices (``w_q << r_o``, or shifting
  the activation operand) would widen a GEMM operand past the array's modes.

Calibration: the V-2SF searches minimise, by default (``objective:
output``), the mean squared error of the *next GEMM's output* on the first
``objective_images`` calibration images (attn·V for the softmax, fc2 for
GELU: the few large probabilities that carry attention weigh in properly,
which the tensor MSE, dominated by the many tiny ones, underrates);
``objective: tensor`` uses the dequantized tensor's own MSE. O-2SF minimises
the LayerNorm output's MSE. Searches only rank candidates; the chosen scales
are frozen in float64 / dyadic.
"""

from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import torch

from reference.calibration import collect_boundaries
from reference.quantizers import calibrate, code_range, dyadic
from reference.recipes import params as _params
from simulator.progress import track
from reference.recipes.config import RecipeConfig
from reference.recipes.static import _gamma, freeze_layernorm, freeze_linear, freeze_static
from reference.vit_float import check_supported, float_boundaries, vit_arch
from simulator.errors import InputError
from simulator.int_nonlinear import GELU_FRAC_BITS
from simulator.qvit import GeluQ, QuantizedViT
from simulator.two_scaled import v2sf_decode, v2sf_encode

__all__ = ["TsptqParams", "parse_params", "build", "search_softmax", "search_gelu", "search_outliers",
           "v2sf_fake_quantize"]


TsptqParams = _params.TsptqParams
parse_params = _params.parse_tsptq


# --- quantizer searches ------------------------------------------------------------------
def v2sf_fake_quantize(v: np.ndarray, s_fine: float, ratio_shift: int, bits: int, signed: int) -> np.ndarray:
    """Float values through a two-scaled word and back (the float-nonlinear encoding)."""
    v = np.asarray(v, dtype=np.float64)
    fine = np.floor(v / s_fine + 0.5).astype(np.int64)
    coarse = np.floor(v / (s_fine * 2.0 ** ratio_shift) + 0.5).astype(np.int64)
    return v2sf_decode(v2sf_encode(fine, coarse, bits, signed), bits, ratio_shift, signed) * s_fine


def _v2sf_fast(v: np.ndarray, s_fine: float, ratio_shift: int, bits: int, signed: int) -> np.ndarray:
    """`v2sf_fake_quantize` in float32 with np.clip/np.where, for ranking search
    candidates only (the same words; a test checks the two agree)."""
    mag = (1 << (bits - 1)) - 1
    fhi = mag >> signed
    flo = -(fhi + 1) * signed
    s = np.float32(s_fine)
    fine = np.floor(v / s + np.float32(0.5))
    coarse = np.clip(np.floor(v / (s * np.float32(2.0 ** ratio_shift)) + np.float32(0.5)), 0, mag)
    return np.where(fine > fhi, coarse * np.float32(2.0 ** ratio_shift), np.clip(fine, flo, fhi)) * s


def _mse(v, q) -> float:
    return float(np.mean((v - q) ** 2))


def search_softmax(p: np.ndarray, bits: int, max_ratio_shift: int, v: np.ndarray | None = None
                   ) -> tuple[int, int, float]:
    """``(fine_exp, ratio_shift, mse)`` for probabilities ``p``: fine 2**-f, coarse 2**-(f-r).

    With ``v`` (the values, ``p`` [..., T, T], ``v`` [..., T, d]) the error is that of
    the attn·V output, ``mean(((p~ - p) @ v)**2)``, else of ``p`` itself.
    """
    p = np.asarray(p, dtype=np.float32)
    v = None if v is None else np.asarray(v, dtype=np.float32)
    best = None
    for f in range(bits - 1, bits + 15):
        for r in range(1, min(f, max_ratio_shift) + 1):
            d = _v2sf_fast(p, 2.0 ** -f, r, bits, 0) - p
            err = float(np.mean((d @ v) ** 2)) if v is not None else float(np.mean(d ** 2))
            if best is None or err < best[2]:
                best = (f, r, err)
    return best


def search_gelu(g: np.ndarray, bits: int, max_ratio_shift: int, grid: int = 24, w: np.ndarray | None = None,
                amax: float | None = None) -> tuple[float, int, float]:
    """``(s_fine, ratio_shift, mse)``: the coarse top ``(2**(b-1)-1) * s * 2**r`` spans a
    clipping ratio in (0.25, 1] of ``amax`` (default max(g)). With ``w`` (fc2's weight
    [out, hidden], ``g`` [rows, hidden]) the error is fc2's output error
    ``mean(((g~ - g) @ w.T)**2)``, else that of ``g`` itself."""
    amax = max(float(np.max(g)) if amax is None else amax, 1e-8)
    g = np.asarray(g, dtype=np.float32)
    w = None if w is None else np.asarray(w, dtype=np.float32)
    top = (1 << (bits - 1)) - 1
    best = None
    for r in range(1, max_ratio_shift + 1):
        for clip in np.linspace(1.0, 0.25, grid):
            s = amax * clip / (top * 2.0 ** r)
            d = _v2sf_fast(g, s, r, bits, 1) - g
            err = float(np.mean((d @ w.T) ** 2)) if w is not None else float(np.mean(d ** 2))
            if best is None or err < best[2]:
                best = (float(s), r, err)
    return best


def _channel_fq(x: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    lo, hi = code_range(bits)
    return np.clip(np.floor(x / scale + 0.5), lo, hi) * scale


def search_outliers(x: np.ndarray, bits: int, thresholds, max_shift: int,
                    method: str = "mse") -> tuple[float, np.ndarray, float]:
    """O-2SF for LayerNorm outputs ``x`` [rows, D]: ``(s, shifts[D], mse)``.

    For each threshold (and "no outliers"), channels with range above
    ``threshold * median`` are outliers; the fine scale is calibrated on the
    others, the outliers get ``s * 2**r`` with r around the one that covers
    their range; the least-MSE candidate wins (no outliers = the static choice).
    """
    x = np.asarray(x, dtype=np.float64)
    amax = np.abs(x).max(axis=0)
    med = max(float(np.median(amax)), 1e-12)
    hi = code_range(bits)[1]
    best = None
    for tau in (math.inf, *thresholds):
        out = amax > tau * med
        if tau != math.inf and not out.any():
            continue
        s = float(calibrate(x[:, ~out], bits, method).scale)
        if out.any():
            need = math.ceil(math.log2(max(float(amax[out].max()) / (s * hi), 1.0)))
            top = min(max_shift, max(1, need))               # capped: outliers beyond it saturate
            shifts_r = range(min(max(1, need - 1), top), top + 1)
        else:
            shifts_r = [0]
        for r in shifts_r:
            shifts = (out * r).astype(np.int64)
            err = _mse(x, _channel_fq(x, s * 2.0 ** shifts, bits))
            if best is None or err < best[2]:
                best = (s, shifts, err)
    return best


# --- freezing ---------------------------------------------------------------------------
@torch.no_grad()
def _float_tensors(model, images: np.ndarray, suffixes: tuple, flatten: bool,
                   batch_size: int = 64) -> dict[str, np.ndarray]:
    """Float boundary tensors whose names end with ``suffixes`` (float32; as
    [rows, last dim] when ``flatten``), concatenated over ``images``."""
    out: dict[str, list] = {}
    for s in range(0, len(images), batch_size):
        x = torch.as_tensor(np.asarray(images[s:s + batch_size], dtype=np.float32))
        for name, t in float_boundaries(model, x).items():
            if name.endswith(suffixes):
                t = t.float().reshape(-1, t.shape[-1]) if flatten else t.float()
                out.setdefault(name, []).append(t.numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _o2sf(ln, lin_w, lin_b, lnq, linq, x, cfg: RecipeConfig, params: TsptqParams, out_bits: int):
    """Refreeze a LayerNorm and the linear it feeds with O-2SF outlier channels."""
    ab = lnq.out_bits
    s, shifts, _ = search_outliers(x, ab, params.outlier_thresholds, params.max_outlier_shift,
                                   cfg.act_calibration)
    f = torch.as_tensor(2.0 ** -shifts.astype(np.float64))
    gamma = ln.weight.detach().double() if ln.weight is not None else torch.ones(len(f), dtype=torch.float64)
    beta = ln.bias.detach().double() if ln.bias is not None else torch.zeros(len(f), dtype=torch.float64)
    scaled = types.SimpleNamespace(weight=gamma * f, bias=beta * f, eps=ln.eps, normalized_shape=ln.normalized_shape)
    new_ln = dataclasses.replace(freeze_layernorm(scaled, lnq.in_scale, lnq.in_bits, s, ab), channel_shift=shifts)
    w = lin_w.detach().double() / f[None, :]
    new_lin = freeze_linear(w, lin_b, s, ab, linq.w_bits, linq.out_scale, out_bits, cfg.weight_calibration)
    info = {"outliers": int(np.count_nonzero(shifts)), "shift": int(shifts.max(initial=0)), "fine_scale": s}
    return new_ln, new_lin, info


def _two_scaled_block(blk, b, i: int, stats, fl, cfg: RecipeConfig, params: TsptqParams):
    p = f"blocks.{i}."
    ab, wb, wm, rb = b.a_bits, cfg.w_bits, cfg.weight_calibration, cfg.residual_bits
    ch, info = {}, {}
    out_obj = params.objective == "output"
    if params.softmax:
        attn = fl[p + "attn"] if out_obj else stats[p + "attn"].values()
        f, r, _ = search_softmax(attn, ab, params.max_ratio_shift, v=fl.get(p + "v"))
        ch["softmax"] = dataclasses.replace(b.softmax, fine_exp=f, ratio_shift=r)
        m, k = dyadic(2.0 ** -f * b.v_scale / b.av.out_scale)
        ch["av"] = dataclasses.replace(b.av, mult=int(m), shift=int(k))
        info["softmax"] = {"fine_exp": f, "ratio_shift": r}
    if params.gelu:
        w2 = None
        if out_obj:
            w2 = blk.mlp.fc2.weight.detach().float()
            g2 = _gamma(blk.ls2)
            w2 = (w2 if g2 is None else w2 * g2.detach().float()[:, None]).numpy()
        g = fl[p + "gelu"].reshape(-1, w2.shape[1]) if out_obj else stats[p + "gelu"].values()
        s_g, r, _ = search_gelu(g, ab, params.max_ratio_shift, w=w2, amax=stats[p + "gelu"].amax)
        m, k = dyadic(2.0 ** -GELU_FRAC_BITS / s_g)
        if int(k) + r > 62:
            raise ValueError(f"{p}gelu: fine shift {int(k)} + ratio {r} exceeds 62")
        ch["gelu"] = GeluQ(out_mult=int(m), out_shift=int(k), out_bits=ab, out_scale=s_g, ratio_shift=r)
        ch["fc2"] = freeze_linear(blk.mlp.fc2.weight, blk.mlp.fc2.bias, s_g, ab, wb, float(b.fc2.out_scale[0]),
                                  rb, wm, residual_scale=float(b.proj.out_scale[0]), res_bits=rb,
                                  gamma=_gamma(blk.ls2))
        info["gelu"] = {"fine_scale": s_g, "ratio_shift": r}
    if params.layernorm:
        ch["norm1"], ch["qkv"], info["norm1"] = _o2sf(blk.norm1, blk.attn.qkv.weight, blk.attn.qkv.bias, b.norm1,
                                                      b.qkv, fl[p + "norm1"], cfg, params, ab)
        ch["norm2"], ch["fc1"], info["norm2"] = _o2sf(blk.norm2, blk.mlp.fc1.weight, blk.mlp.fc1.bias, b.norm2,
                                                      b.fc1, fl[p + "norm2"], cfg, params, 0)
    return dataclasses.replace(b, **ch), info


def build(model: torch.nn.Module, calib_images: np.ndarray, cfg: RecipeConfig,
          model_name: str = "model") -> QuantizedViT:
    """Calibrate on ``calib_images`` and freeze the TSPTQ-ViT recipe."""
    params = parse_params(cfg.params)
    check_supported(model)
    arch = vit_arch(model)
    calib = calib_images[: cfg.calib_images]
    stats = collect_boundaries(model, calib)
    base = freeze_static(model, stats, cfg, arch, model_name, len(calib))
    fl = _float_tensors(model, calib, (".norm1", ".norm2"), True) if params.layernorm else {}
    if params.objective == "output":
        fl.update(_float_tensors(model, calib[: params.objective_images], (".attn", ".v", ".gelu"), False))
    blocks, infos = [], []
    for i, b in track(list(enumerate(base.blocks)), f"tsptq search ({cfg.label})", unit="block"):
        nb, info = _two_scaled_block(model.blocks[i], b, i, stats, fl, cfg, params)
        blocks.append(nb)
        infos.append(info)
    meta = {**base.meta, "tsptq": {"params": {k: (list(v) if isinstance(v, tuple) else v)
                                              for k, v in dataclasses.asdict(params).items()},
                                   "blocks": infos}}
    return dataclasses.replace(base, blocks=tuple(blocks), meta=meta)
