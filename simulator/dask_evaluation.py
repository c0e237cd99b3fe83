"""``simulate --cluster ADDRESS|local``: one evaluation's images sharded over Dask workers.

The client (the ``simulate`` process) checks the inputs, builds the float
model and calibrates the `QuantizedGraph` as in-process; then

1. it cuts the evaluated images (positions ``0 .. n-1`` after ``--images``)
   into shards of whole batches (`shard_bounds`: about `SHARDS_PER_WORKER`
   shards per worker, at most `MAX_SHARD_BATCHES` batches each), and picks
   the fake-quant reference's positions once (`simulator.evaluation.reference_positions`);
2. it sends the float model and the QuantizedGraph to every worker once
   (``Client.scatter(broadcast=True)``), and submits one task per shard
   (`run_shard`, a `ShardJob`): the worker reads *its* images from the data
   path itself (``--data``, the same loader and transform,
   `reference.data.load_dataset` with ``rows``), and runs fp32, the
   simulator, and the fake-quant reference on the shard's checked positions
   (`simulator.evaluation.evaluate_images`);
3. the shards come back as they finish (predictions, bit-exact flags, the
   trace of the shard) and are merged in image order
   (`simulator.evaluation.merge_shards`); costs, accuracies and the JSON are
   computed from the merged result, exactly as in-process.

A shard starts on a batch boundary, so every batch is the one the in-process
run evaluates: codes, bit-exact counts, trace-based costs and accuracies
are identical (tests/simulator/test_dask_evaluation.py). Workers need this
project installed at the same version and the data path readable under the
same name; the checkpoint is not read on the workers (the model travels).
See docs/cluster.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from simulator.evaluation import Shard, evaluate_images, merge_shards

__all__ = ["ShardJob", "shard_bounds", "run_shard", "evaluate_on_cluster", "SHARDS_PER_WORKER",
           "MAX_SHARD_BATCHES"]

SHARDS_PER_WORKER = 4       # several shards per worker: a slow worker delays the end by one shard, not a quarter
MAX_SHARD_BATCHES = 16      # images held by one task: 16 batches (1,024 images at 224 px = 0.6 GB float32)


@dataclass(frozen=True)
class ShardJob:
    """One task: images ``start .. stop-1`` of the evaluation (``data``/``limit`` as ``--data``/``--images``)."""

    data: str | None
    limit: int | None
    max_pixels: int
    start: int
    stop: int
    checked: tuple[int, ...]     # reference positions inside [start, stop)
    batch_size: int
    backend: str
    threads: int | None          # torch/numba threads on the worker (None: the worker's own setting)


def shard_bounds(n_images: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` tiling ``range(n_images)``; every start a multiple of ``batch_size``."""
    n_batches = math.ceil(n_images / batch_size)
    per = max(1, min(MAX_SHARD_BATCHES, math.ceil(n_batches / (SHARDS_PER_WORKER * max(1, workers)))))
    return [(b * batch_size, min(n_images, (b + per) * batch_size)) for b in range(0, n_batches, per)]


def _limit_threads(threads: int | None) -> None:
    if threads:
        import numba
        import torch

        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def run_shard(job: ShardJob, model, qgraph) -> Shard:
    """On a worker: load the shard's images from ``job.data`` and evaluate them."""
    from reference.data import load_dataset
    from simulator.engines import graph_executors

    _limit_threads(job.threads)
    images, labels = load_dataset(job.data, model, split="test", limit=job.limit, max_pixels=job.max_pixels,
                                  rows=slice(job.start, job.stop))
    return evaluate_images(model, graph_executors(qgraph, job.backend), images, labels, job.start,
                           np.asarray(job.checked, dtype=np.int64), job.batch_size)


def evaluate_on_cluster(cluster: str, model, qgraph, *, data: str | None, limit: int | None, max_pixels: int,
                        n_images: int, checked: np.ndarray, batch_size: int, backend: str) -> tuple[Shard, dict]:
    """(the merged evaluation, the ``cluster`` record of ``--json``) of ``n_images`` images on Dask."""
    from distributed import as_completed

    from simulator import progress
    from simulator.dask_client import connect

    local = cluster == "local"
    client, local_cluster = connect(cluster, os.cpu_count() or 1)
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        bounds = shard_bounds(n_images, batch_size, workers)
        model_f, qgraph_f = client.scatter([model, qgraph], broadcast=True, hash=False)
        futures = []
        for start, stop in bounds:
            inside = tuple(int(p) for p in checked[(checked >= start) & (checked < stop)])
            job = ShardJob(data, limit, max_pixels, start, stop, inside, batch_size, backend, 1 if local else None)
            futures.append(client.submit(run_shard, job, model_f, qgraph_f, pure=False))
        shards = []
        with progress.Progress(n_images, f"evaluating {n_images} images on {workers} Dask workers "
                                         f"({len(bounds)} shards)", unit="img") as bar:
            for fut in as_completed(futures):
                shards.append(fut.result())
                bar.update(shards[-1].n_images)
    finally:
        client.close()
        if local_cluster is not None:
            local_cluster.close()
    record = {"address": cluster, "workers": workers, "shards": len(bounds),
              "images_per_shard": bounds[0][1] - bounds[0][0]}
    return merge_shards(shards), record
