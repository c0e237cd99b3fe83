"""Cold start: compile the default job's kernels in a helper process while ``simulate`` starts up.

The first ``simulate`` after an install finds no compiled
kernels in the cache (`simulator.kernel_cache`). Compiling the parallel variants of
the kernel specialisations the default job (a ViT, static recipe) runs costs ~10 s
of CPU, their serial variants ~3 s (`simulator.jit`: every row kernel has both). On a
machine with more than one core the compiling can overlap the ~4 s of importing
torch and timm and calibrating: `start` launches ``python -m simulator.warm_start``
right after the inputs are checked; that process (numpy and numba only, no torch)
calls each kernel wrapper once on tiny arrays of the dtypes the integer executor
passes (`simulator.int_ops`; the wrappers normalise accumulator dtypes,
`simulator.kernels.output_stage`), so numba compiles and caches exactly those
specialisations: first the **serial** variants, in the *reverse* of the order the
executor first calls them -- the main process, reaching the simulator, runs the serial
variants while its helper is alive (`simulator.jit.use_parallel`), loads from the cache
what is already there and compiles the rest itself in forward order, so the two meet in
the middle and at most one kernel is compiled twice -- then the **parallel** variants,
which the main process switches to once the helper has exited, or at the latest
`SERIAL_WINDOW_S` after launching it (and every later process finds cached). The helper runs
at the lowest priority (``nice 19``): on a 2-core machine a helper at equal priority took a
core from the job's torch threads and doubled its fake-quant time. Numba writes cache files atomically (temp file + rename), so two
processes may fill one cache.

Nothing waits on the helper and nothing depends on it: it is an optimisation
whose only effect is cache entries. It is not started when a stamp file in the
cache directory says this code (kernel sources, numba and Python versions) was
warmed already, when ``NUMBA_DISABLE_JIT`` is set, or when
``VIT_INTSIM_WARM_START=0``. A kernel that changes its call dtypes without
updating `warm_calls` merely compiles in the main process again;
tests/simulator/test_warm_start.py checks that the default job compiles
nothing after a warm start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from simulator.kernel_cache import stamp_path

__all__ = ["warm_calls", "warm", "start", "compiling"]

_ROOT = Path(__file__).resolve().parents[1]
_started: list = []         # the helper process of this process, if one was started (at most one)
_launched: list = []        # its time.monotonic() at launch
SERIAL_WINDOW_S = 30.0      # at most this long after the launch do the kernels run serial (`compiling`)


def warm_calls() -> list[tuple[str, Callable[[], object]]]:
    """(name, call) for each kernel specialisation of the default job, in the order the integer executor
    first calls them on a ViT with a static recipe: patchify, patch embedding (int16 residual stream),
    LayerNorm, qkv (int8), softmax (int64 and int32 accumulators), the numba pair GEMM (timed by ``--backend
    auto`` and chosen on some machines), attn @ V, proj + residual, fc1 (Q12 int32), GELU; with the code
    digests of the bit-exact check (`simulator.kernels.code_digest`) of each dtype where it first occurs,
    the fake-quant executor's float32 codes last (it runs after the simulator)."""
    import numpy as np

    from simulator.kernels.code_digest import row_digests
    from simulator.kernels.gemm import int_matmul
    from simulator.kernels.nonlinear import int_gelu, int_layernorm, int_softmax
    from simulator.kernels.output_stage import linear_output, quantize_patches, requant_output

    acc32 = np.zeros((2, 4), dtype=np.int32)
    acc64 = np.zeros((2, 4), dtype=np.int64)
    vec = np.ones(4, dtype=np.int64)
    res16 = np.zeros((2, 4), dtype=np.int16)

    def digest(dtype):
        return lambda: row_digests(np.zeros((1, 2), dtype))

    def linear(out_dtype, res=None):
        return lambda: linear_output(acc32, vec, vec, vec, -8, 7, out_dtype, res=res, res_mult=1 if res is not None
                                     else 0, res_shift=1)

    return [
        ("quantize_patches", lambda: quantize_patches(np.zeros((1, 1, 2, 2), np.float32), (2, 2), 0.5, 8)),
        ("row_digests uint8", digest(np.uint8)),
        ("linear_output int16", linear(np.int16)),
        ("row_digests int16", digest(np.int16)),
        ("int_layernorm", lambda: int_layernorm(res16, 1, vec, vec, 1, -8, 7, np.int8)),
        ("row_digests int8", digest(np.int8)),
        ("linear_output int8", linear(np.int8)),
        ("int_softmax", lambda: int_softmax(acc64, 1, 1, 8)),
        ("int_softmax int32", lambda: int_softmax(acc32, 1, 1, 8)),
        ("numba pair GEMM", lambda: int_matmul(np.ones((1, 2, 4), np.uint8), np.ones((1, 4, 2), np.int8), 255, 127,
                                              backend="numba")),
        ("requant_output", lambda: requant_output(acc64, 1, 1, -8, 7, np.int8)),
        ("linear_output int16 + residual", linear(np.int16, res16)),
        ("linear_output int32", linear(np.int32)),
        ("row_digests int32", digest(np.int32)),
        ("int_gelu", lambda: int_gelu(acc32, 1, 1, -8, 7, np.int8)),
        ("row_digests float32", digest(np.float32)),      # the fake-quant executor's float-held codes
    ]


def warm() -> None:
    """Compile (or load) every specialisation of `warm_calls`: the serial variants last first, then the
    parallel ones; then write the stamp."""
    from simulator.jit import kernel_variant

    calls = warm_calls()
    with kernel_variant("serial"):
        for _, call in reversed(calls):
            call()
    with kernel_variant("parallel"):
        for _, call in calls:
            call()
    stamp = stamp_path()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text("kernels of the default job compiled into this cache (simulator/warm_start.py)\n")


def compiling() -> bool:
    """Whether a helper this process launched is still running (its exit is checked, not waited for)
    and was launched less than `SERIAL_WINDOW_S` ago. Past that window a long job stops waiting for
    it: the parallel variants it needs are then loaded from the cache or compiled in the job."""
    return bool(_started) and time.monotonic() - _launched[0] < SERIAL_WINDOW_S and _started[0].poll() is None


def start() -> subprocess.Popen | None:
    """Launch the helper process (once per process) unless the cache is already warm or warm starts are
    off; never raises."""
    if os.environ.get("VIT_INTSIM_WARM_START", "1") == "0" or os.environ.get("NUMBA_DISABLE_JIT", "0") != "0":
        return None
    if _started:
        return _started[0]
    try:
        if stamp_path().exists():
            return None
        env = dict(os.environ, VIT_INTSIM_WARM_START="0")
        root = str(_ROOT)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")     # this checkout's simulator
        _launched[:] = [time.monotonic()]
        _started.append(subprocess.Popen([sys.executable, "-m", "simulator.warm_start"], env=env, cwd=root,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL))
    except OSError:
        return None
    from simulator.jit import serial_while

    serial_while(compiling)
    return _started[0]


if __name__ == "__main__":
    try:
        os.nice(19)     # the lowest priority: the job that launched it (its torch threads) comes first
    except OSError:     # pragma: no cover - not permitted
        pass
    warm()
