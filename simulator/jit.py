"""Numba JIT flags in one place, and the jitted fixed-point primitives.

``cache=True`` so a second start does not recompile (into
`simulator.kernel_cache.user_cache_dir` unless ``NUMBA_CACHE_DIR`` is set).

Row kernels (`row_kernel`: an outer ``prange`` loop over rows) are each compiled two ways from
the one source: **parallel** (``parallel=True``,
numba's thread pool) and **serial** (the same loop as a plain ``range``). The parallel variant is the
one that runs; the serial one exists for the first ``simulate`` after an install: numba compiles a
parallel kernel in 2-3x the time of the serial one (output stage 1.8 s vs 0.8 s, softmax 1.5 s vs
0.5 s, LayerNorm 1.0 s vs 0.3 s; idle 2-core AMD EPYC, numba 0.68), which made up most of the cold
start. While a warm-start helper this process launched (`simulator.warm_start`) is still compiling
the parallel variants into the cache (at most `simulator.warm_start.SERIAL_WINDOW_S` after its
launch), `use_parallel` is False and the kernels run serial; from the first call after that they
run parallel, loaded from the cache (or compiled here if the helper did not get to them). Both variants compute every row
by the same code, so the codes do not depend on which ran (tests/simulator/test_row_kernels.py).

The scalar primitives are
the very functions of `simulator.fixedpoint` / `simulator.int_nonlinear`,
compiled here (inlined into the kernels).
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Callable

import numba

from simulator import fixedpoint, int_activations, int_nonlinear, scale_predictor, softmax_codes, two_scaled
from simulator.kernel_cache import user_cache_dir

__all__ = ["kernel", "row_kernel", "RowKernel", "use_parallel", "kernel_variant", "serial_while",
           "rounding_rshift", "saturate", "requantize", "isqrt",
           "round_half_up", "exp2_neg", "softmax_scale_codes", "gelu_q12", "ln_normalize", "ln_affine",
           "v2sf_encode", "v2sf_decode", "softmax_v2sf_code", "gelu_v2sf_code", "quick_gelu_q12", "rounding_mean",
           "softmax_pow2_codes", "log2_code", "log2_operand"]



if not os.environ.get("NUMBA_CACHE_DIR"):   # read by numba's cache locator when each kernel below is defined
    numba.config.CACHE_DIR = str(user_cache_dir())   # (simulator.kernel_cache: why a user directory)

kernel = numba.njit(cache=True, nogil=True)
_parallel = numba.njit(cache=True, nogil=True, parallel=True)
_scalar = numba.njit(cache=True, nogil=True, inline="always")

_variant: dict = {"forced": None, "parallel_ok": False, "pending": None}


def serial_while(pending: Callable[[], bool]) -> None:
    """Run the serial variants as long as ``pending()`` is true (`simulator.warm_start.start` passes
    its helper's `compiling`); the first false answer switches to the parallel ones for good."""
    _variant["pending"], _variant["parallel_ok"] = pending, False


def use_parallel() -> bool:
    """Whether row kernels run their parallel variant now: yes, unless a variant is forced
    (`kernel_variant`) or a warm-start helper launched by this process is still compiling (`serial_while`)."""
    if _variant["forced"] is not None:
        return _variant["forced"] == "parallel"
    if _variant["parallel_ok"]:
        return True
    pending = _variant["pending"]
    if pending is not None and pending():
        return False
    _variant["parallel_ok"] = True
    return True


@contextlib.contextmanager
def kernel_variant(name: str):
    """Run every row kernel's ``"serial"`` or ``"parallel"`` variant inside the block."""
    if name not in ("serial", "parallel"):
        raise ValueError(f"kernel variant: expected 'serial' or 'parallel', got {name!r}")
    old, _variant["forced"] = _variant["forced"], name
    try:
        yield
    finally:
        _variant["forced"] = old


class RowKernel:
    """One row kernel compiled serial and parallel (module docstring); calls run `use_parallel`'s pick."""

    def __init__(self, f):
        self.py_func = f
        self.serial = kernel(f)
        twin = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
        # another qualified name: numba names a kernel's cache files by it, and the cache key
        # does not include ``parallel``, so the two variants must not share files
        twin.__module__, twin.__qualname__, twin.__doc__ = f.__module__, f.__qualname__ + "__parallel", f.__doc__
        self.parallel = _parallel(twin)
        self.__name__, self.__qualname__, self.__doc__ = f.__name__, f.__qualname__, f.__doc__

    def __call__(self, *args):
        return (self.parallel if use_parallel() else self.serial)(*args)


def row_kernel(f) -> RowKernel:
    """Decorator: a kernel whose outer loop is a ``prange`` over rows, as a `RowKernel`."""
    return RowKernel(f)


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
