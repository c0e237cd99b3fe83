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

from reference.fakequant import (gelu_stage, layernorm_apply, layernorm_moments, layernorm_recip, layernorm_stage,
                                 linear_output_stage, softmax_stage)
from reference.tensor_primitives import quick_gelu_q12, requantize, saturate

__all__ = ["code_dtype", "FusedStages", "in_row_chunks", "linear_codes", "residual_linear_codes", "requantized_codes",
           "layernorm_codes", "layernorm_sums", "layernorm_apply_codes", "softmax_codes", "gelu_codes",
           "quick_gelu_codes", "CHUNK_ELEMENTS", "COMPILE_MIN_ELEMENTS"]


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


def layernorm_sums(x):
    """``(S1, V)`` of each row (`reference.fakequant.layernorm_moments`)."""
    return layernorm_moments(x.long())


def layernorm_apply_codes(x, s1, recip, gamma_mult, beta_q, out_shift, lo, hi, dtype: torch.dtype):
    """LayerNorm codes from the row sums and reciprocals (`reference.fakequant.layernorm_apply`)."""
    return layernorm_apply(x.long(), s1, recip, gamma_mult, beta_q, out_shift, lo, hi).to(dtype)


def softmax_codes(acc, in_mult, in_shift, out_bits, dtype: torch.dtype):
    """Integer softmax of each row (`reference.fakequant.softmax_stage`)."""
    return softmax_stage(acc.long(), in_mult, in_shift, out_bits).to(dtype)


def gelu_codes(h, out_mult, out_shift, lo, hi, dtype: torch.dtype):
    """Integer GELU of Q12 values, requantized to codes (`reference.fakequant.gelu_stage`)."""
    return gelu_stage(h.long(), out_mult, out_shift, lo, hi).to(dtype)


def quick_gelu_codes(h, out_mult, out_shift, lo, hi, dtype: torch.dtype):
    """Integer quick-GELU of Q12 values, requantized to codes."""
    return saturate(requantize(quick_gelu_q12(h.long()), out_mult, out_shift), lo, hi).to(dtype)


_STAGES = {linear_codes: (0,), residual_linear_codes: (0, 4), requantized_codes: (0,), layernorm_codes: (0,),
           softmax_codes: (0,), gelu_codes: (0,), quick_gelu_codes: (0,), layernorm_sums: None,
           layernorm_apply_codes: (0, 1, 2)}     # stage -> its row-wise arguments (None: not split)
CHUNK_ELEMENTS = 1 << 17      # eager: rows per step so that an int64 temporary (1 MiB) stays in cache
# compile="auto": fuse a stage whose input has at least this many elements. 2**20: every stage of a DeiT-S
# batch of 16 (LayerNorm input 16x197x384 = 1.2M) compiles; the bundled digits ViT (batch 64: 64x17x384 =
# 418k) never does -- at 2**18 it did, and the one-off compile (~4 s per process with a warm inductor
# cache) made the default `simulate` job's fake-quant 4x slower (4.4 s vs 1.1 s, idle 2-core EPYC).
COMPILE_MIN_ELEMENTS = 1 << 20
_compiled: dict = {}          # stage -> its torch.compile wrapper (one per process: dynamo caches per code object)
_failed: set = set()          # stages whose compilation failed in this process: eager from then on


def _scalar(v):
    """Python / numpy ints -> 0-d int64 tensors (tensors pass through). Never plain ints into a
    compiled stage: TorchInductor turns dynamic int arguments into symbols (measured: wrong codes)."""
    return v if isinstance(v, torch.Tensor) else torch.tensor(int(v), dtype=torch.int64)


def in_row_chunks(fn, args: tuple, rows_at: tuple):
    """``fn(*args)`` computed on blocks of rows (all axes but the last flattened) of the arguments
    at ``rows_at``, written into one output: the same integers (every stage is row-wise: its
    reductions run over the last axis, its parameters broadcast along it), with int64
    temporaries of at most `CHUNK_ELEMENTS` elements instead of the whole tensor."""
    x = args[0]
    if rows_at is None:
        return fn(*args)
    n = x.shape[-1] if x.dim() else 1
    rows = x.numel() // max(n, 1)
    step = max(1, CHUNK_ELEMENTS // max(n, 1))
    if rows <= step or x.dim() < 2:
        return fn(*args)
    flat = list(args)
    for i in rows_at:
        flat[i] = args[i].reshape(rows, args[i].shape[-1])
    codes, over = None, 0
    for s in range(0, rows, step):
        part = fn(*(a[s:s + step] if i in rows_at else a for i, a in enumerate(flat)))
        c, o = part if isinstance(part, tuple) else (part, None)
        if codes is None:
            codes = torch.empty((rows, c.shape[-1]), dtype=c.dtype)
        codes[s:s + step] = c
        if o is not None:
            over = over + o
    codes = codes.reshape(*x.shape[:-1], codes.shape[-1])
    return (codes, over) if isinstance(part, tuple) else codes


def _compiled_call(fn, args):
    """``fn`` through ``torch.compile(dynamic=True)``; on a compiler failure a warning, and eager from then on."""
    compiled = _compiled.get(fn)
    if compiled is None:
        compiled = _compiled[fn] = torch.compile(fn, dynamic=True)
    try:
        return compiled(*args)
    except Exception as e:        # noqa: BLE001 -- any compiler failure: the same function, eagerly
        _failed.add(fn)
        msg = str(e).splitlines()[0] if str(e) else ""
        warnings.warn(f"fake-quant: compiling {fn.__name__} failed ({type(e).__name__}: {msg}); running it eagerly",
                      RuntimeWarning)
        return in_row_chunks(fn, args, _STAGES[fn])


class FusedStages:
    """The stages of this module, fused by TorchInductor or eager in row blocks (`in_row_chunks`);
    the same integers either way. ``compile``: True (always fuse), False (never), or None ("auto":
    fuse a call whose input has at least `COMPILE_MIN_ELEMENTS` elements -- a DeiT-S batch -- and
    keep small ones, a test's toy model, clear of the one-off compile)."""

    def __init__(self, compile: bool | None = None):
        self.compile = compile

    def _fuses(self, x) -> bool:
        if self.compile is None:
            return x.numel() >= COMPILE_MIN_ELEMENTS
        return self.compile

    def _run(self, fn, *args):
        args = tuple(a if isinstance(a, torch.dtype) else _scalar(a) for a in args)
        if fn in _failed or not self._fuses(args[0]):
            return in_row_chunks(fn, args, _STAGES[fn])
        return _compiled_call(fn, args)

    def linear_codes(self, acc, bias, mult, shift, lo, hi, dtype):
        return self._run(linear_codes, acc, bias, mult, shift, lo, hi, dtype)

    def residual_linear_codes(self, acc, bias, mult, shift, res, res_mult, res_shift, lo, hi, dtype):
        return self._run(residual_linear_codes, acc, bias, mult, shift, res, res_mult, res_shift, lo, hi, dtype)

    def requantized_codes(self, acc, mult, shift, lo, hi, dtype):
        return self._run(requantized_codes, acc, mult, shift, lo, hi, dtype)

    def softmax_codes(self, acc, in_mult, in_shift, out_bits, dtype):
        return self._run(softmax_codes, acc, in_mult, in_shift, out_bits, dtype)

    def gelu_codes(self, h, out_mult, out_shift, lo, hi, dtype):
        return self._run(gelu_codes, h, out_mult, out_shift, lo, hi, dtype)

    def quick_gelu_codes(self, h, out_mult, out_shift, lo, hi, dtype):
        return self._run(quick_gelu_codes, h, out_mult, out_shift, lo, hi, dtype)

    def layernorm_codes(self, x, eps_q, gamma_mult, beta_q, out_shift, lo, hi, dtype):
        """Fused: the row sums and the output loop compiled, the 31-step integer square root of
        one value per row eager (unrolled, it made TorchInductor's compile take minutes)."""
        if layernorm_apply_codes in _failed or not self._fuses(x):
            return self._run(layernorm_codes, x, eps_q, gamma_mult, beta_q, out_shift, lo, hi, dtype)
        s1, v = self._run(layernorm_sums, x)
        recip = layernorm_recip(v, _scalar(eps_q))
        return self._run(layernorm_apply_codes, x, s1, recip, gamma_mult, beta_q, out_shift, lo, hi, dtype)
