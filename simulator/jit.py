"""Numba JIT flags in one place, and the jitted fixed-point primitives.

``cache=True`` so a second start does not recompile (into
`simulator.kernel_cache.user_cache_dir` unless ``NUMBA_CACHE_DIR`` is set); ``nogil=True`` so row
kernels run on several threads at once (`simulator.kernels.row_blocks`: every kernel is compiled
serial, with its row range as arguments -- numba's ``parallel=True`` costs 2-3x the compile time).
The scalar primitives are
the very functions of `simulator.fixedpoint` / `simulator.int_nonlinear`,
compiled here (inlined into the kernels).
"""

from __future__ import annotations

import os
import types

import numba

from simulator import fixedpoint, int_activations, int_nonlinear, scale_predictor, softmax_codes, two_scaled
from simulator.kernel_cache import user_cache_dir

__all__ = ["kernel", "rounding_rshift", "saturate", "requantize", "isqrt",
           "round_half_up", "exp2_neg", "softmax_scale_codes", "gelu_q12", "ln_normalize", "ln_affine",
           "v2sf_encode", "v2sf_decode", "softmax_v2sf_code", "gelu_v2sf_code", "quick_gelu_q12", "rounding_mean",
           "softmax_pow2_codes", "log2_code", "log2_operand"]



if not os.environ.get("NUMBA_CACHE_DIR"):   # read by numba's cache locator when each kernel below is defined
    numba.config.CACHE_DIR = str(user_cache_dir())   # (simulator.kernel_cache: why a user directory)

kernel = numba.njit(cache=True, nogil=True)
_scalar = numba.njit(cache=True, nogil=True, inline="always")

_compiled: dict = {}


def _compile(f):
    """Jit ``f`` with the primitives it calls rebound to their jitted versions.

    The function object is rebuilt from its own code with a copy of its
    module's globals in which every already-compiled primitive is replaced,
    so the source stays the plain-Python one that torch and numpy also run.
    """
    g = dict(f.__globals__)
    g.update(_compiled)
    fn = types.FunctionType(f.__code__, g, f.__name__, f.__defaults__, f.__closure__)
    fn.__module__, fn.__qualname__ = f.__module__, f.__qualname__
    _compiled[f.__name__] = _scalar(fn)
    return _compiled[f.__name__]


rounding_rshift = _compile(fixedpoint.rounding_rshift)
saturate = _compile(fixedpoint.saturate)
requantize = _compile(fixedpoint.requantize)
isqrt = _compile(fixedpoint.isqrt)
round_half_up = _compile(fixedpoint.round_half_up)
exp2_neg = _compile(int_nonlinear.exp2_neg)
softmax_scale_codes = _compile(int_nonlinear.softmax_scale_codes)
gelu_q12 = _compile(int_nonlinear.gelu_q12)
ln_normalize = _compile(int_nonlinear.ln_normalize)
ln_affine = _compile(int_nonlinear.ln_affine)
v2sf_encode = _compile(two_scaled.v2sf_encode)
v2sf_decode = _compile(two_scaled.v2sf_decode)
softmax_v2sf_code = _compile(two_scaled.softmax_v2sf_code)
gelu_v2sf_code = _compile(two_scaled.gelu_v2sf_code)
statistic_rank = _compile(scale_predictor.statistic_rank)
normalise_statistic = _compile(scale_predictor.normalise_statistic)
horner_log2 = _compile(scale_predictor.horner_log2)
quick_gelu_q12 = _compile(int_activations.quick_gelu_q12)
rounding_mean = _compile(int_activations.rounding_mean)
softmax_pow2_codes = _compile(softmax_codes.softmax_pow2_codes)
floor_log2 = _compile(softmax_codes.floor_log2)
log2_code = _compile(softmax_codes.log2_code)
log2_operand = _compile(softmax_codes.log2_operand)
