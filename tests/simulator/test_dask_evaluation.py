"""simulate --cluster: one evaluation sharded over Dask workers gives the in-process result
(simulator/dask_evaluation.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulator.cli import main
from simulator.dask_evaluation import MAX_SHARD_BATCHES, ShardJob, run_shard, shard_bounds

distributed = pytest.importorskip("distributed")

# Fields that may differ between two runs of the same evaluation: clocks and where it ran.
_TIMING = ("wall_time_s", "since_process_start_s", "calibration_s", "executor_s", "cluster")


@pytest.mark.parametrize("n, bs, workers", [(1, 64, 1), (96, 16, 1), (1000, 64, 3), (50_000, 64, 32),
                                            (50_000, 64, 1)])
def test_shard_bounds_tile_whole_batches(n, bs, workers):
    bounds = shard_bounds(n, bs, workers)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(a % bs == 0 and a < b for a, b in bounds)
    assert all(b - a <= MAX_SHARD_BATCHES * bs for a, b in bounds)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as c:
        yield c


def _strip(r: dict) -> dict:
    """The record without timings, the creation time and the GEMM backend report (the backends were
    measured in this process; workers report none): the results themselves must be equal."""
    r = {k: v for k, v in r.items() if k not in _TIMING and k != "gemm_backend"}
    r["tool"] = {k: v for k, v in r["tool"].items() if k != "created_utc"}
    return r


def test_cluster_evaluation_equals_in_process(capsys, tmp_path, cluster):
    common = ["--images", "96", "--batch-size", "16", "--reference-images", "40", "--recipe", "static_w4a4",
              "--hw", "npu_int8", "--no-progress"]
    assert main([*common, "--json", str(tmp_path / "here.json")]) == 0
    here_out = capsys.readouterr().out
    assert main([*common, "--cluster", cluster.scheduler_address, "--json", str(tmp_path / "dask.json")]) == 0
    dask_out = capsys.readouterr().out
    here, there = (json.loads((tmp_path / f).read_text()) for f in ("here.json", "dask.json"))
    assert here["cluster"] is None
    assert there["cluster"]["shards"] == 3 and there["cluster"]["workers"] == 1   # 6 batches, 4 shards/worker
    assert _strip(there) == _strip(here)
    assert here["gemm_backend"]["requested"] == "auto" and there["gemm_backend"] is None
    assert there["bit_exact_images"] == 40 and there["reference"]["checked_images"] == 40
    assert there["hardware"][0]["per_image"]["cycles"] > 0
    assert "evaluated on Dask" in dask_out
    lines = lambda out: [ln for ln in out.splitlines()  # noqa: E731
                         if "wall time" not in ln and "Dask" not in ln and "simulator GEMMs" not in ln]
    assert lines(dask_out) == lines(here_out)


def test_a_shard_reads_its_own_images(digits_w8a8_graph):
    """run_shard (what a worker runs) loads positions start..stop of the evaluation itself."""
    import reference
    from simulator.engines import graph_executors
    from simulator.evaluation import evaluate_images

    model, qg = digits_w8a8_graph
    images, labels = reference.load_dataset("digits", model, "test", limit=50)
    whole = evaluate_images(model, graph_executors(qg, "auto"), images, labels, 0, np.arange(50), 10)
    part = run_shard(ShardJob(None, 50, 1 << 30, 20, 40, tuple(range(20, 40)), 10, "auto", None), model, qg)
    assert part.start == 20 and part.labels.tolist() == labels[20:40].tolist()
    assert part.preds["sim"].tolist() == whole.preds["sim"][20:40].tolist()
    assert part.preds["fq_int"].tolist() == whole.preds["fq_int"][20:40].tolist()
    assert part.exact.all() and len(part.exact) == 20


@pytest.fixture(scope="module")
def digits_w8a8_graph():
    import reference

    model = reference.load_model()
    calib, _ = reference.load_dataset("digits", model, "calib")
    return model, reference.quantize(model, calib, "configs/recipes/static_w8a8.yaml")


def test_an_image_folder_shard_is_the_same_rows_of_the_whole_load(tmp_path, digits_w8a8_graph):
    """What a worker loads (rows of the --images subset) equals those rows of the client's load."""
    from PIL import Image

    from reference.data import dataset_size, load_dataset

    model, _ = digits_w8a8_graph
    rng = np.random.default_rng(3)
    for i in range(9):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(tmp_path / f"c{i % 2}" / f"{i}.png")
    whole_x, whole_y = load_dataset(str(tmp_path), model, limit=6)
    part_x, part_y = load_dataset(str(tmp_path), model, limit=6, rows=slice(2, 5))
    assert dataset_size(str(tmp_path), "test", 6) == len(whole_x) == 6 and dataset_size(str(tmp_path)) == 9
    assert (part_x == whole_x[2:5]).all() and part_y.tolist() == whole_y[2:5].tolist()
    assert dataset_size("digits", "test", 50) == 50 and dataset_size(None) == 360
