"""The forward implementation of a run: the integer graph (the only one).

Issue 13 moved every recipe onto one integer graph lowered from the timm
model (`simulator.ir`, `simulator.walk`, `simulator.qgraph`) and removed the
hand-written per-model walks. ``--engine`` stays for scripts that pass it:
``graph`` and ``auto`` both run the graph; ``legacy`` is refused with one
line (exit 2). Part of the CLI's composition root: upstream modules are
imported lazily.
"""

from __future__ import annotations

import os

from simulator.errors import InputError

__all__ = ["ENGINES", "choose_engine", "graph_quantizer", "graph_executors", "available_cores", "configure_threads"]

ENGINES = ("auto", "graph")
LEGACY_REMOVED = ("--engine legacy: the hand-written legacy walks were removed (issue 13); "
                  "every recipe runs on the integer graph (--engine graph or auto)")

def choose_engine(requested: str) -> str:
    """``graph`` for ``auto`` / ``graph``; an `InputError` for ``legacy`` (removed) or anything else."""
    if requested == "legacy":
        raise InputError(LEGACY_REMOVED)
    if requested not in ENGINES:
        raise InputError(f"--engine: expected one of {', '.join(ENGINES)}, got {requested!r}")
    return "graph"


def graph_quantizer(recipe: str):
    """The graph calibrator of ``recipe``: ``f(model, calib_images, cfg, model_name=...) -> QuantizedGraph``
    (`reference.recipes.CALIBRATORS`)."""
    from reference.recipes import calibrator

    return calibrator(recipe)


def graph_executors(qgraph, backend: str):
    """(fake-quant integer-only, fake-quant float-nonlinear, integer simulator) over one QuantizedGraph."""
    from reference.fakequant_ops import GraphFakeQuantExecutor
    from simulator.int_ops import GraphIntegerExecutor

    return (GraphFakeQuantExecutor(qgraph, "integer"), GraphFakeQuantExecutor(qgraph, "float"),
            GraphIntegerExecutor(qgraph, gemm_backend=backend))


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. under taskset or a cgroup), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def configure_threads(n: int | None = None) -> dict:
    """Size torch's and numba's thread pools once for a run: ``n`` each (default: `available_cores`).

    Both pools get the same size because they never run at the same time: the walk runs one op
    at a time, and an op is either a numba kernel (numba's pool; torch's threads are parked) or a
    torch GEMM (torch's pool; numba's are parked), so at most ``n`` threads compute at once. The
    two pools are separate OpenMP runtimes (torch's bundled libgomp, numba's omp layer), so a
    parked pool does not shrink the other. numba cannot exceed the pool it launched with
    (``NUMBA_NUM_THREADS``, default: the CPU count); a larger ``n`` is capped there, and the
    returned ``{"torch": t, "numba": m, "numba_layer": ...}`` says what was set and which numba
    threading layer runs (``tbb`` when the tbb package is installed, else ``omp``/``workqueue``).
    On a busy machine a parallel region waits for its slowest thread; TBB's work stealing lets
    the running threads take a descheduled one's rows (README, "Threads").
    """
    import numba
    import torch

    n = available_cores() if n is None else n
    if n < 1:
        raise InputError(f"--threads: expected a positive integer, got {n}")
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return {"torch": torch.get_num_threads(), "numba": numba.get_num_threads(),
            "numba_layer": numba.threading_layer()}
