"""One sweep point: calibrate, quantize, run both executors, cost the trace.

This module (with `reports.sweep`) is the sweep's composition root: it is the
only part of reports/ that imports the reference, simulator and hwmodels
packages, and does so inside functions, so that the figures and the report
modules stay readers of result JSON only.

Two record kinds, both plain JSON:

* a **run** record (`run_record`) -- one model x one recipe configuration
  evaluated on the sweep's images: top-1 of the float model, of the
  fake-quant executor (integer-only nonlinearities) and of the integer
  simulator, the bit-exact image count between those two, the executed
  trace, and ``sqnr_layers``: the SQNR of every quantized tensor against the
  fp32 model over the same images (`reference.layer_error`; ``null`` for
  exact tensors, and for the whole list when the graph has early exits). Expensive; this is what workers compute.
* a **point** record (`cost_point`) -- a run record costed on one accelerator
  by `hwmodels.estimate` (cheap; done where the results are collected).

Cache keys are content hashes (`run_key`, `point_key`): the model name, the
checkpoint's bytes, the data spec and image count, the recipe fields, the
accelerator YAML's bytes and the code version (the bytes of every source
file under reference/, simulator/, hwmodels/ and this module).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from simulator.bundled_models import BUILTIN_DATASETS, BUNDLED_DIR, BUNDLED_MODELS

__all__ = ["code_version", "run_key", "point_key", "run_record", "cost_point", "file_digest"]

ROOT = Path(__file__).resolve().parents[1]
_CODE_DIRS = ("reference", "simulator", "hwmodels")


def _sha256(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """Hash of the project's result-producing source files (path + bytes)."""
    files = sorted(p for d in _CODE_DIRS for p in (ROOT / d).rglob("*.py")) + [Path(__file__).resolve()]
    return _sha256(*(rel.encode() + b"\0" + p.read_bytes() for p in files
                     for rel in [str(p.relative_to(ROOT))]))


@functools.lru_cache(maxsize=None)
def _file_digest_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (memoised by path, size and mtime)."""
    st = os.stat(path)
    return _file_digest_cached(os.fspath(path), st.st_size, st.st_mtime_ns)


def _checkpoint_digest(model) -> str:
    if model.checkpoint is not None:
        return file_digest(model.checkpoint)
    if model.name in BUNDLED_MODELS:
        return _sha256(*(file_digest(BUNDLED_DIR / f"{model.name}.{ext}").encode() for ext in ("safetensors", "json")))
    return "no-checkpoint"      # a timm name without weights: randomly initialised


def _data_digest(spec: str | None) -> str:
    """A built-in dataset names a fixed split (its code is in the code version); a folder: its file list."""
    if spec is None or spec in BUILTIN_DATASETS:
        return spec or "digits"
    root = Path(spec)
    listing = sorted(f"{p.relative_to(root)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                     for p in root.rglob("*") if p.is_file())
    return _sha256("\n".join(listing).encode())


def run_key(run, code: str) -> str:
    """Content hash of everything a run record depends on."""
    m = run.model
    ident = {"model": m.name, "checkpoint": _checkpoint_digest(m), "data": _data_digest(m.data),
             "calib": _data_digest(m.calib_data), "images": m.images, "recipe": run.recipe, "code": code}
    return _sha256(json.dumps(ident, sort_keys=True).encode())


def point_key(run_key_: str, accelerator_file: str, code: str) -> str:
    return _sha256(json.dumps([run_key_, file_digest(accelerator_file), code]).encode())


# --------------------------------------------------------------------- run


def _limit_threads(threads: int | None) -> None:
    if threads:
        import numba
        import torch

        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


@functools.lru_cache(maxsize=2)
def _model_and_data(model_spec):
    """Load the float model and evaluation images once per worker process."""
    import torch

    from reference.data import load_dataset
    from reference.models import load_model

    model = load_model(model_spec.name, model_spec.checkpoint)
    images, labels = load_dataset(model_spec.data, model, split="test", limit=model_spec.images)
    with torch.no_grad():
        fp32 = np.concatenate([model(torch.as_tensor(images[s:s + 64])).argmax(1).numpy()
                               for s in range(0, len(images), 64)])
    return model, images, labels, float(np.mean(fp32 == labels) * 100)


@functools.lru_cache(maxsize=4)
def _calibration_images(model_spec, count: int):
    from reference.data import load_dataset

    model = _model_and_data(model_spec)[0]
    return load_dataset(model_spec.calib_data, model, split="calib", limit=count)[0]


def _grouping_bops(trace) -> float:
    """Mean BOP-equivalents per image of IGQ's group assignment and partial-sum combining
    (`simulator.igq.overhead_bops`; 0 for recipes without groups), over the layers each image ran."""
    from simulator.igq import overhead_bops

    per_layer = np.array([overhead_bops([r]) for r in trace.layers], dtype=np.int64)
    return float((trace.ran_mask().astype(np.int64) @ per_layer).mean()) if len(per_layer) else 0.0


def run_record(run, threads: int | None = None) -> dict:
    """Calibrate + quantize ``run.recipe`` and evaluate fake-quant and simulator; JSON-ready."""
    import time

    from reference.fakequant_ops import GraphFakeQuantExecutor
    from reference.layer_error import SqnrAccumulator
    from reference.recipes import quantize
    from reference.recipes.config import recipe_from_dict
    from simulator.int_ops import GraphIntegerExecutor
    from simulator.results import bit_exact_images, first_mismatch
    from simulator.trace import Trace

    _limit_threads(threads)
    t0 = time.perf_counter()
    cfg = recipe_from_dict(run.recipe, where=f"point {run.label}")
    model, images, labels, fp32_top1 = _model_and_data(run.model)
    qg = quantize(model, _calibration_images(run.model, cfg.calib_images), cfg, model_name=run.model.name)
    fq, sim = GraphFakeQuantExecutor(qg, "integer"), GraphIntegerExecutor(qg)
    has_exits = any(op.kind == "exit" for op in qg.graph.ops)
    sqnr = None if has_exits else SqnrAccumulator(qg)
    preds = {"fq": [], "sim": []}
    exact, mismatch, traces = [], None, []
    for s in range(0, len(images), run.batch_size):
        x = images[s:s + run.batch_size]
        r_fq, r_sim = fq.run(x, batch_size=run.batch_size), sim.run(x, batch_size=run.batch_size)
        preds["fq"].append(r_fq.predictions)
        preds["sim"].append(r_sim.predictions)
        exact.append(bit_exact_images(r_fq.codes, r_sim.codes))
        mismatch = mismatch or first_mismatch(r_fq.codes, r_sim.codes)
        traces.append(r_sim.trace)
        if sqnr is not None:
            sqnr.add(x, r_sim.codes)
    trace = Trace.concat(traces)
    top1 = {k: float(np.mean(np.concatenate(v) == labels) * 100) for k, v in preds.items()}
    return {
        "label": run.label, "model": dict(run.model.__dict__), "recipe": dict(run.recipe),
        "images": int(len(images)),
        "top1": {"fp32": fp32_top1, "fakequant_integer": top1["fq"], "simulator": top1["sim"]},
        "correct": {k: np.packbits(np.concatenate(v) == labels).tobytes().hex() for k, v in
                    (("fakequant_integer", preds["fq"]), ("simulator", preds["sim"]))},
        "bit_exact_images": int(np.concatenate(exact).sum()), "first_mismatch": mismatch,
        "accumulator_overflows": int(sum(trace.overflows.values())),
        "macs_per_image": float(trace.macs_per_image().mean()),
        "bops_per_image": float(trace.bops_per_image().mean()),
        "grouping_bops_per_image": _grouping_bops(trace),
        "sqnr_layers": None if sqnr is None else [
            {**r, "sqnr_db": r["sqnr_db"] if np.isfinite(r["sqnr_db"]) else None} for r in sqnr.rows()],
        "run_seconds": time.perf_counter() - t0,
        "trace": trace.to_dict(),
    }


# -------------------------------------------------------------------- cost


def _layer_rows(cost: dict, offchip: str) -> list[dict]:
    return [{"name": c["name"], "kind": c["kind"], "ran_fraction": c["ran_fraction"], "cycles": c["cycles"],
             "offchip_bytes": c["read_bytes"][offchip] + c["write_bytes"][offchip],
             "energy_pj": c["energy_pj"], "macs": c["macs"], "bops": c["bops"]} for c in cost["layers"]]


def cost_point(run: dict, accelerator_file: str) -> dict:
    """A run record costed on one accelerator: the record the reports read."""
    import hwmodels
    from simulator.trace import Trace

    npu = hwmodels.load(accelerator_file)
    report = hwmodels.estimate(Trace.from_dict(run["trace"]), npu)
    cost = report.to_dict()
    offchip = npu.memories[0].name
    per_image_cycles = report.per_image("cycles")
    varies = bool(np.ptp(per_image_cycles) > 0)
    point = {k: v for k, v in run.items() if k != "trace"}
    point.update({
        "accelerator": npu.name, "accelerator_file": str(accelerator_file), "offchip_level": offchip,
        "clock_mhz": npu.clock_mhz, "cost": cost["per_image"], "distribution": cost["distribution"],
        "layers": _layer_rows(cost, offchip),
        "per_image_cycles": per_image_cycles.tolist() if varies else None,
    })
    return point
