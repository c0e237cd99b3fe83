"""The fake-quant op set's hot integer stages as pure tensor functions, fused by TorchInductor.

Each function here reads a GEMM accumulator (int32, int64, or float32 holding
exact integers: `reference.fakequant.exact_int_matmul`) or codes, widens it to
int64, applies a stage of `reference.fakequant` (the vectorised fixed-point
formulas of `simulator.fixedpoint` / `simulator.int_nonlinear`) and writes
codes in the narrowest integer dtype of the output's range (`code_dtype`).
Scalars (shifts, multipliers, bounds) arrive as 0-d int64 tensors, so one
compiled graph serves every layer and both executors' params.

`FusedStages(compile=True)` runs them through ``torch.compile(dynamic=True)``:
TorchInductor turns each stage's chain of int64 operators into one loop over
the tensor (no int64 temporaries, which in eager mode dominate the time and
the memory of the fake-quant executor). Integer operators only, so the fused
loop and the eager operator-by-operator evaluation give the same integers
(tested, hypothesis, extreme values included:
``tests/reference/test_fused_stages.py``). The compiled code is cached on
disk by TorchInductor (its FX graph cache, ``TORCHINDUCTOR_CACHE_DIR``,
default ``/tmp/torchinductor_<user>``): only the first process on a machine
compiles. Where compiling fails (no C++ compiler, an unsupported platform)
the stage warns once and runs eagerly; ``compile=False`` always does.
"""

from __future__ import annotations

import warnings

import torch

from reference.fakequant import gelu_stage, layernorm_stage, linear_output_stage, softmax_stage
from reference.tensor_primitives import quick_gelu_q12, requantize, saturate

__all__ = ["code_dtype", "FusedStages", "linear_codes", "residual_linear_codes", "requantized_codes",
           "layernorm_codes", "softmax_codes", "gelu_codes", "quick_gelu_codes"]


def code_dtype(lo: int, hi: int) -> torch.dtype:
    """The narrowest torch integer dtype holding every code of ``[lo, hi]``."""
    for dt in (torch.int8, torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return torch.int64


# --- the stages (pure functions of tensors; ``dtype`` is the output codes' dtype) ---------------

def linear_codes(acc, bias, mult, shift, lo, hi, dtype: torch.dtype):
    """GEMM output stage (`reference.fakequant.linear_output_stage`) -> (codes, saturated accumulators)."""
    y, over = linear_output_stage(acc.long(), bias, mult, shift, None, 0, 0, lo, hi)
    return y.to(dtype), over


def residual_linear_codes(acc, bias, mult, shift, res, res_mult, res_shift, lo, hi, dtype: torch.dtype):
    """`linear_codes` with the fused residual ``requantize(res, res_mult, res_shift)``."""
    y, over = linear_output_stage(acc.long(), bias, mult, shift, res.long(), res_mult, res_shift, lo, hi)
    return y.to(dtype), over


def requantized_codes(acc, mult, shift, lo, hi, dtype: torch.dtype):
    """``saturate(requantize(acc, mult, shift), lo, hi)`` (an act x act matmul into codes)."""
    return saturate(requantize(acc.long(), mult, shift), lo, hi).to(dtype)


def layernorm_codes(x, eps_q, gamma_mult, beta_q, out_shift, lo, hi, dtype: torch.dtype):
    """Integer LayerNorm over the last axis (`reference.fakequant.layernorm_stage`)."""
    return layernorm_stage(x.long(), eps_q, gamma_mult, beta_q, out_shift, lo, hi).to(dtype)


def softmax_codes(acc, in_mult, in_shift, out_bits, dtype: torch.dtype):
    """Integer softmax of each row (`reference.fakequant.softmax_stage`)."""
    return softmax_stage(acc.long(), in_mult, in_shift, out_bits).to(dtype)


def gelu_codes(h, out_mult, out_shift, lo, hi, dtype: torch.dtype):
    """Integer GELU of Q12 values, requantized to codes (`reference.fakequant.gelu_stage`)."""
    return gelu_stage(h.long(), out_mult, out_shift, lo, hi).to(dtype)


def quick_gelu_codes(h, out_mult, out_shift, lo, hi, dtype: torch.dtype):
    """Integer quick-GELU of Q12 values, requantized to codes."""
    return saturate(requantize(quick_gelu_q12(h.long()), out_mult, out_shift), lo, hi).to(dtype)


_STAGES = (linear_codes, residual_linear_codes, requantized_codes, layernorm_codes, softmax_codes, gelu_codes,
           quick_gelu_codes)
_compiled: dict = {}          # stage -> its torch.compile wrapper (one per process: dynamo caches per code object)
_failed: set = set()          # stages whose compilation failed in this process: eager from then on


def _scalar(v):
    """Python / numpy ints -> 0-d int64 tensors (tensors pass through)."""
    return v if isinstance(v, torch.Tensor) else torch.tensor(int(v), dtype=torch.int64)


class FusedStages:
    """``FusedStages(compile).<stage>(...)``: a stage of this module, compiled or eager (same integers)."""

    def __init__(self, compile: bool = True):
        self.compile = bool(compile)

    def __getattr__(self, name: str):
        fn = globals().get(name)
        if fn not in _STAGES:
            raise AttributeError(name)

        def run(*args):
            dtype = args[-1]
            args = tuple(_scalar(a) for a in args[:-1]) + (dtype,)
            if not self.compile or fn in _failed:
                return fn(*args)
            compiled = _compiled.get(fn)
            if compiled is None:
                compiled = _compiled[fn] = torch.compile(fn, dynamic=True)
            try:
                return compiled(*args)
            except Exception as e:        # noqa: BLE001 -- any compiler failure: the same function, eagerly
                _failed.add(fn)
                warnings.warn(f"fake-quant: compiling {fn.__name__} failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); running it eagerly", RuntimeWarning)
                return fn(*args)
        return run
