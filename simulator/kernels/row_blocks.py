"""Run a serial row kernel over blocks of rows on a small thread pool.

Every row-parallel kernel of the simulator is compiled *serial* (``numba.njit(nogil=True)``,
`simulator.jit.kernel`) with an explicit row range as its first two arguments,

    kernel(r0, r1, *arrays_and_scalars)      # computes rows r0 .. r1-1, returns a count or None

and `run_row_blocks` splits one call's rows into contiguous blocks that `threads` Python threads
take in turn (the calling thread is one of them). The kernels release the GIL, so the blocks run
in parallel on the cores like numba's ``parallel=True`` loops did.

Why not ``parallel=True`` / ``prange``: numba compiles a parallel kernel in 2-3x the time of the
serial one (measured on the output stage 1.8 s vs 0.8 s, softmax 1.5 s vs 0.5 s, LayerNorm 1.0 s vs
0.3 s, idle 2-core AMD EPYC, numba 0.68), and the first ``simulate`` after an install compiles every
kernel of its job -- that was most of the cold start (README, "Benchmark"). A serial kernel also
never starts numba's threading layer, so only torch's pool and this one exist.

The result does not depend on the split: rows are independent (each row's codes are a function of
that row and the frozen parameters), and what a kernel returns per block (bias-overflow counts) is
an integer sum. Small calls run in one block on the calling thread: a block is at least
`MIN_BLOCK_ELEMENTS` elements, so handing it to another thread (~20-50 us) never dominates.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["set_threads", "threads", "row_blocks", "run_row_blocks", "MIN_BLOCK_ELEMENTS"]

MIN_BLOCK_ELEMENTS = 1 << 14     # elements (rows x row length) below which a block is not split further
BLOCKS_PER_THREAD = 4            # more blocks than threads: a thread descheduled by a busy machine delays
                                 # one small block, the others take the rest

_lock = threading.Lock()
_state: dict = {"threads": None, "pool": None}


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def set_threads(n: int) -> int:
    """Use ``n`` threads (the caller included) for every later kernel call; returns ``n``."""
    if int(n) < 1:
        raise ValueError(f"threads: expected a positive integer, got {n}")
    with _lock:
        if _state["threads"] != int(n) and _state["pool"] is not None:
            _state["pool"].shutdown(wait=True)
            _state["pool"] = None
        _state["threads"] = int(n)
    return int(n)


def threads() -> int:
    """Threads the kernels run on: as set by `set_threads` (``simulate --threads``), else the CPUs
    this process may use."""
    return _state["threads"] or _default_threads()


def _pool(n: int) -> ThreadPoolExecutor:
    with _lock:
        if _state["pool"] is None:
            _state["pool"] = ThreadPoolExecutor(max_workers=max(n - 1, 1), thread_name_prefix="row-blocks")
        return _state["pool"]


def row_blocks(rows: int, row_elements: int, n_threads: int | None = None) -> list[tuple[int, int]]:
    """Contiguous ``[r0, r1)`` blocks covering ``0 .. rows-1``: up to ``BLOCKS_PER_THREAD`` per thread,
    each at least `MIN_BLOCK_ELEMENTS` elements (one block when the call is small or single-threaded)."""
    n_threads = threads() if n_threads is None else n_threads
    total = rows * max(int(row_elements), 1)
    n = min(rows, n_threads * BLOCKS_PER_THREAD, max(total // MIN_BLOCK_ELEMENTS, 1)) if n_threads > 1 else 1
    n = max(n, 1)
    bounds = [rows * b // n for b in range(n + 1)]
    return [(bounds[b], bounds[b + 1]) for b in range(n) if bounds[b + 1] > bounds[b]] or [(0, rows)]


def run_row_blocks(kernel, rows: int, row_elements: int, *args) -> list:
    """``[kernel(r0, r1, *args) for each block of `row_blocks`]`` (block order), the blocks run on
    `threads` threads; an exception of any block is raised after every block has finished."""
    n_threads = threads()
    blocks = row_blocks(rows, row_elements, n_threads)
    if len(blocks) == 1:
        return [kernel(0, rows, *args)]
    results: list = [None] * len(blocks)
    take = itertools.count()          # next() on a count is atomic under the GIL

    def work():
        while (b := next(take)) < len(blocks):
            r0, r1 = blocks[b]
            results[b] = kernel(r0, r1, *args)

    pool = _pool(n_threads)
    helpers = [pool.submit(work) for _ in range(min(n_threads, len(blocks)) - 1)]
    try:
        work()
    finally:
        errors = [f.exception() for f in helpers]
    for e in errors:
        if e is not None:
            raise e
    return results
