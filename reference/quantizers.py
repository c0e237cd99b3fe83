"""The one set of quantizer primitives every recipe is built on.

* Codes: symmetric (zero point 0) or asymmetric (integer zero point),
  per-tensor or per-channel (``axis``), 2-8 bits (16 for the residual stream
  and logits). Float -> code uses the project's one rounding rule, round half
  up (`simulator.fixedpoint.round_half_up`), and its one saturation rule.
* Calibration: ``minmax``, ``percentile`` and ``mse`` (grid search of the
  clipping range minimising the mean squared quantization error, the search
  PTQ4ViT/RepQ-ViT use, here on the tensor itself).
* Dyadic multipliers: a real rescaling factor r is frozen once as
  ``(mult, shift)`` with ``r ~= mult * 2**-shift``, ``mult < 2**31`` (gemmlowp's
  QuantizeMultiplier idea, kept as a plain integer and shift).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.errors import InputError
from reference.tensor_primitives import round_half_up
from simulator.fixedpoint import saturate

__all__ = [
    "QParams", "code_range", "quantize", "dequantize", "fake_quantize",
    "calibrate", "mse_search", "weight_scales", "dyadic", "CALIBRATIONS",
]

CALIBRATIONS = ("minmax", "percentile", "mse")
MULT_BITS = 31
MAX_SHIFT = 62


def code_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """``[lo, hi]`` of a ``bits``-wide code: signed two's complement or unsigned."""
    if not 2 <= bits <= 32:
        raise InputError(f"bit-width must be in 2..32, got {bits}")
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@dataclass(frozen=True)
class QParams:
    """Scale (scalar or per-channel array), zero point, bits, signedness."""

    scale: np.ndarray | float
    bits: int
    signed: bool = True
    zero_point: np.ndarray | int = 0

    @property
    def lo(self) -> int:
        return code_range(self.bits, self.signed)[0]

    @property
    def hi(self) -> int:
        return code_range(self.bits, self.signed)[1]


def quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """``saturate(round_half_up(x / scale) + zero_point)`` as int64 codes."""
    q = round_half_up(np.asarray(x, dtype=np.float64) / qp.scale).astype(np.int64) + qp.zero_point
    return saturate(q, qp.lo, qp.hi)


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    return (np.asarray(q, dtype=np.float64) - qp.zero_point) * qp.scale


def fake_quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    return dequantize(quantize(x, qp), qp)


def _symmetric_scale(amax: float, bits: int, signed: bool) -> float:
    hi = code_range(bits, signed)[1]
    return max(float(amax), 1e-12) / hi


def calibrate(x: np.ndarray, bits: int, method: str = "minmax", *, signed: bool = True,
              symmetric: bool = True, percentile: float = 99.99, grid: int = 32) -> QParams:
    """Per-tensor quantizer for the values ``x`` (any shape, flattened).

    minmax: range = max |x| (or [min, max] when asymmetric);
    percentile: range = the given percentile of |x| (or the two tails);
    mse: range = argmin over ``grid`` clipping ratios in (0.2, 1] of the
    max range of ``mean((x - fake_quantize(x))**2)``.
    """
    if method not in CALIBRATIONS:
        raise InputError(f"calibration method {method!r}: expected one of {', '.join(CALIBRATIONS)}")
    x = np.asarray(x, dtype=np.float64).ravel()
    if symmetric:
        amax = np.abs(x).max(initial=0.0)
        if method == "percentile":
            amax = min(amax, float(np.percentile(np.abs(x), percentile)))
        qp = QParams(_symmetric_scale(amax, bits, signed), bits, signed)
        if method == "mse":
            qp = mse_search(x, [QParams(_symmetric_scale(amax * r, bits, signed), bits, signed)
                                 for r in np.linspace(1.0, 0.2, grid)])
        return qp
    lo_v, hi_v = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if method == "percentile":
        lo_v, hi_v = (float(np.percentile(x, 100 - percentile)), float(np.percentile(x, percentile)))
    cands = [_asym(lo_v * r, hi_v * r, bits) for r in (np.linspace(1.0, 0.2, grid) if method == "mse" else [1.0])]
    return mse_search(x, cands) if len(cands) > 1 else cands[0]


def _asym(lo_v: float, hi_v: float, bits: int) -> QParams:
    lo_v, hi_v = min(lo_v, 0.0), max(hi_v, 0.0)
    levels = (1 << bits) - 1
    scale = max(hi_v - lo_v, 1e-12) / levels
    zp = int(round_half_up(-lo_v / scale))
    return QParams(scale, bits, signed=False, zero_point=int(saturate(zp, 0, levels)))


def mse_search(x: np.ndarray, candidates: list[QParams]) -> QParams:
    """The candidate with the least mean squared error (ranked in float32 with
    np.clip, the same clamp as `saturate`, for speed; the scale stays float64)."""
    x32 = x.astype(np.float32)
    errs = []
    for qp in candidates:
        s, zp = np.float32(qp.scale), np.float32(qp.zero_point)
        q = np.clip(np.floor(x32 / s + 0.5) + zp, qp.lo, qp.hi)
        errs.append(float(np.mean((x32 - (q - zp) * s) ** 2)))
    return candidates[int(np.argmin(errs))]


def weight_scales(w: np.ndarray, bits: int, method: str = "minmax", grid: int = 32) -> np.ndarray:
    """Symmetric per-output-channel scales of a weight matrix ``w`` [n, k].

    minmax: ``max|w_c| / (2**(bits-1) - 1)``; mse: per-channel grid search of
    the clipping ratio (vectorised over channels).
    """
    if method not in ("minmax", "mse"):
        raise InputError(f"weight calibration {method!r}: expected 'minmax' or 'mse'")
    w = np.asarray(w, dtype=np.float64)
    hi = code_range(bits)[1]
    amax = np.maximum(np.abs(w).max(axis=1), 1e-12)
    if method == "minmax":
        return amax / hi
    lo = code_range(bits)[0]
    best_s, best_e = amax / hi, np.full(len(w), np.inf)
    w32 = w.astype(np.float32)   # the search only ranks candidates; the chosen scale stays float64
    for r in np.linspace(1.0, 0.2, grid):
        s = (amax * r / hi)[:, None]
        s32 = s.astype(np.float32)
        err = ((w32 - np.clip(np.floor(w32 / s32 + 0.5), lo, hi) * s32) ** 2).mean(axis=1)
        better = err < best_e
        best_e = np.where(better, err, best_e)
        best_s = np.where(better, s[:, 0], best_s)
    return best_s


class DyadicRangeError(ValueError):
    """A real multiplier that no ``(mult, shift)`` pair holds: a degenerate scale."""


def dyadic(real, mult_bits: int = MULT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Freeze real multipliers as ``(mult, shift)``: ``real ~= mult * 2**-shift``.

    ``mult`` is normalised into ``[2**(mult_bits-1), 2**mult_bits)`` where the
    shift allows (``0 <= shift <= 62``); tiny factors keep shift 62 and lose
    leading bits, zero stays zero. Factors >= 2**(mult_bits-1) are not
    representable with shift >= 0 and raise (a scale mismatch that large is a
    calibration bug, not a user input).
    """
    r = np.asarray(real, dtype=np.float64)
    if np.any(r < 0) or not np.all(np.isfinite(r)):
        raise DyadicRangeError(f"a rescale factor is {r.reshape(-1)[np.argmax(~(np.isfinite(r) & (r >= 0)))]}, "
                               "expected finite and >= 0")
    if np.any(r >= 2.0 ** (mult_bits - 1)):
        raise DyadicRangeError(f"a rescale factor of {r.max():.6g} does not fit a {mult_bits}-bit dyadic multiplier "
                               f"(at most {2.0 ** (mult_bits - 1):.6g})")
    safe = np.where(r > 0, r, 1.0)
    e = np.floor(np.log2(safe)).astype(np.int64)          # r = f * 2**e, f in [1, 2)
    shift = np.clip(mult_bits - 1 - e, 0, MAX_SHIFT)
    mult = round_half_up(r * np.exp2(shift.astype(np.float64))).astype(np.int64)
    over = mult >= (1 << mult_bits)                        # rounding carried out of range
    mult = np.where(over, mult >> 1, mult)
    shift = np.where(over, shift - 1, shift)
    mult = np.where(r > 0, mult, 0)
    return mult, shift
