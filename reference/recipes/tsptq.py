"""`tsptq`: TSPTQ-ViT post-training quantization (Tai & Wu, 2023): params and the scale searches.

The calibrator that rewrites a static `QuantizedGraph` with them is
`reference.recipes.tsptq_graph` (the ``two_scaled`` mechanism).

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

import math

import numpy as np

from reference.quantizers import calibrate, code_range
from reference.recipes import params as _params
from simulator.two_scaled import v2sf_decode, v2sf_encode

__all__ = ["TsptqParams", "parse_params", "search_softmax", "search_gelu", "search_outliers", "v2sf_fake_quantize"]


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


SCREEN_ROWS = 128      # output objective: candidates ranked first on this many evenly spaced rows ...
SCREEN_KEEP = 8        # ... and the best this many of them re-ranked on every row


def _gelu_candidates(amax: float, bits: int, max_ratio_shift: int, grid: int) -> list[tuple[float, int]]:
    top = (1 << (bits - 1)) - 1
    return [(amax * clip / (top * 2.0 ** r), r) for r in range(1, max_ratio_shift + 1)
            for clip in np.linspace(1.0, 0.25, grid)]


def search_gelu(g: np.ndarray, bits: int, max_ratio_shift: int, grid: int = 24, w: np.ndarray | None = None,
                amax: float | None = None) -> tuple[float, int, float]:
    """``(s_fine, ratio_shift, mse)``: the coarse top ``(2**(b-1)-1) * s * 2**r`` spans a
    clipping ratio in (0.25, 1] of ``amax`` (default max(g)). With ``w`` (fc2's weight
    [out, hidden], ``g`` [rows, hidden]) the error is fc2's output error
    ``mean(((g~ - g) @ w.T)**2)``, else that of ``g`` itself.

    The output objective costs one GEMM per candidate (192 by default), so it is screened:
    every candidate is ranked on `SCREEN_ROWS` evenly spaced rows of ``g`` (when there are
    more), and only the best `SCREEN_KEEP` are ranked on all rows (the first least error
    wins, in candidate order, as the exhaustive search would among them)."""
    amax = max(float(np.max(g)) if amax is None else amax, 1e-8)
    g = np.asarray(g, dtype=np.float32)
    w = None if w is None else np.asarray(w, dtype=np.float32)
    cands = _gelu_candidates(amax, bits, max_ratio_shift, grid)

    def err(rows, s, r):
        d = _v2sf_fast(rows, s, r, bits, 1) - rows
        return float(np.mean((d @ w.T) ** 2)) if w is not None else float(np.mean(d ** 2))

    order = range(len(cands))
    if w is not None and g.ndim == 2 and len(g) > 2 * SCREEN_ROWS:
        sub = g[np.linspace(0, len(g) - 1, SCREEN_ROWS).astype(np.int64)]
        screened = [err(sub, s, r) for s, r in cands]
        order = sorted(sorted(order, key=lambda i: screened[i])[:SCREEN_KEEP])
    best = None
    for i in order:
        s, r = cands[i]
        e = err(g, s, r)
        if best is None or e < best[2]:
            best = (float(s), r, e)
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
