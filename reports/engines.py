"""Where sweep runs execute: in-process, on local processes, or on Dask.

Every engine maps ``fn(item, threads=...)`` over items and yields
``(index, result)`` as runs complete, so the caller can cache each result
the moment it arrives (an interrupted sweep keeps what finished).

* ``serial``: this process, one run after another (``--workers 1``).
* ``processes``: `concurrent.futures.ProcessPoolExecutor` with the *spawn*
  start method (a forked child of a process that already started torch's or
  OpenMP's threads can deadlock); each worker loads the model once and runs
  torch/numba on one thread, so N workers use N cores.
* ``dask``: Dask distributed (``--cluster ADDRESS`` connects to a running
  scheduler, ``--cluster local`` starts a `distributed.LocalCluster`).
  Why Dask and not Ray: a run is a coarse, independent, pure Python task
  returning a small dict -- exactly `Client.submit` + `as_completed`. Dask
  distributed is pure Python and pip-installable with no binary
  components, its scheduler and workers start from the command line
  (``dask scheduler`` / ``dask worker ADDRESS``) or in-process for tests
  (`LocalCluster(processes=False)` talks over in-process queues, no
  network), and it already runs on HPC batch systems (dask-jobqueue) and
  Kubernetes. Ray would also work but ships a large binary runtime (raylet,
  GCS, object store) for features (actors, shared-memory objects) a sweep
  does not need. Workers of an existing cluster need this project installed
  and the sweep's checkpoint/data paths readable; results return to the
  client, which alone writes the cache.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed

from simulator.dask_client import connect

__all__ = ["run_serial", "run_processes", "run_dask"]


def run_serial(fn: Callable, items: Sequence) -> Iterator[tuple[int, object]]:
    for i, item in enumerate(items):
        yield i, fn(item)


def run_processes(fn: Callable, items: Sequence, workers: int) -> Iterator[tuple[int, object]]:
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx)
    try:
        futures = {pool.submit(fn, item, threads=1): i for i, item in enumerate(items)}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_dask(fn: Callable, items: Sequence, cluster: str, workers: int,
             keys: Sequence[str] | None = None) -> Iterator[tuple[int, object]]:
    """Submit one task per item to a Dask cluster and yield results as they finish."""
    from distributed import as_completed as dask_completed

    client, local = connect(cluster, workers)
    try:
        futures = {}
        for i, item in enumerate(items):
            key = None if keys is None else f"vit-intsim-run-{keys[i]}"
            futures[client.submit(fn, item, threads=1, key=key, pure=False)] = i
        for fut in dask_completed(list(futures)):
            yield futures[fut], fut.result()
    finally:
        client.close()
        if local is not None:
            local.close()
