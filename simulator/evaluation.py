"""One evaluation of a quantized model: fp32, the fake-quant reference and the integer simulator.

The main job (`simulator.cli`) evaluates three things on the same images,
batch by batch: the float model (fp32), the fake-quant executors (PyTorch,
integer-only and float-nonlinear) and the integer simulator (numba), and
counts the images whose codes agree at every tensor boundary.

**How much of the reference runs** (``--reference``): the fake-quant
executors are the slow part of a large evaluation, and the bit-exactness they
check is a property of the datapath, not of each image, so

* ``full``: they run on every image (the behaviour before ``--reference``);
* ``sample`` (default): on every image up to `SAMPLE_SIZE` (1,000), then on a
  fixed random sample of that many: positions ``sort(permutation(n)[:k])``
  of a ``numpy.random.default_rng(SAMPLE_SEED)`` generator (seed 0), the
  same for a given image count on every machine, thread count and cluster;
* ``none``: not at all (no bit-exact check, no fake-quant top-1).

fp32 and the simulator always run on every image. Fake-quant top-1 and the
bit-exact count are over the checked images; `reference_record` says which.
**Codes are digested, not kept.** Both executors reduce each image's codes of
every tensor to a 64-bit digest as they make them
(`simulator.kernels.code_digest`, ``keep_codes="digest"``), and an image is
bit-exact when every tensor's digests agree; a DeiT-S image has ~18M codes per
executor, which kept and compared cost many times the walks themselves. The
first mismatching image is run again by both executors with its codes kept, to
name the first differing code.

**Shards.** `evaluate_images` evaluates one contiguous run of images (the
whole set in-process, or one shard of it on a Dask worker,
`simulator.dask_evaluation`) and returns a `Shard`; `merge_shards`
concatenates shards in image order. The batches are the same either way
(shards start on a batch boundary), so a sharded evaluation gives the same
predictions, codes, bit-exact counts and trace as the in-process one.

Part of the CLI's composition root: torch and the executors are imported
lazily.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from simulator.errors import InputError
from simulator.results import bit_exact_images, first_mismatch
from simulator.trace import Trace

__all__ = ["REFERENCE_MODES", "SAMPLE_SIZE", "SAMPLE_SEED", "EXECUTORS", "Shard", "reference_positions",
           "reference_record", "evaluate_images", "merge_shards", "evaluation_summary"]

REFERENCE_MODES = ("full", "sample", "none")
SAMPLE_SIZE = 1000          # --reference sample: every image up to this many, then a sample of this many
SAMPLE_SEED = 0
EXECUTORS = ("fp32", "fq_int", "fq_float", "sim")
_SUMMARY_KEYS = {"fp32": "fp32", "fq_int": "fakequant_integer", "fq_float": "fakequant_float_nonlinear",
                 "sim": "simulator"}


def reference_positions(n_images: int, mode: str, sample_size: int = SAMPLE_SIZE) -> np.ndarray:
    """Sorted positions (0-based, in the evaluated image order) of the images the fake-quant reference
    runs on: all (``full``, or ``sample`` with ``n_images <= sample_size``), a seed-0 sample of
    ``sample_size`` (``sample``), or none."""
    if mode not in REFERENCE_MODES:
        raise InputError(f"--reference: expected one of {', '.join(REFERENCE_MODES)}, got {mode!r}")
    if isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer)) or sample_size <= 0:
        raise InputError(f"--reference-images: expected a positive integer, got {sample_size!r}")
    if mode == "none":
        return np.zeros(0, dtype=np.int64)
    if mode == "full" or n_images <= sample_size:
        return np.arange(n_images, dtype=np.int64)
    return np.sort(np.random.default_rng(SAMPLE_SEED).permutation(n_images)[:sample_size]).astype(np.int64)


def reference_record(mode: str, sample_size: int, n_images: int, positions: np.ndarray) -> dict:
    """The ``reference`` field of ``--json``: the mode, the sample rule and which images were checked
    (``positions``: null when every image was checked, else the sorted 0-based positions)."""
    every = len(positions) == n_images
    return {"mode": mode, "sample_size": int(sample_size), "sample_seed": SAMPLE_SEED,
            "checked_images": int(len(positions)), "of_images": int(n_images),
            "positions": None if every else [int(p) for p in positions]}


@dataclass
class Shard:
    """What the evaluation of a contiguous run of images found.

    ``preds``: fp32 and sim one per image; fq_int and fq_float one per checked image. ``checked``:
    positions of the checked images in the whole evaluation; ``exact``: one bool each. ``mismatch``:
    the first differing code of the first mismatching checked image. ``seconds``: per executor."""

    start: int
    labels: np.ndarray
    preds: dict[str, np.ndarray]
    checked: np.ndarray
    exact: np.ndarray
    mismatch: str | None
    trace: Trace
    seconds: dict[str, float]

    @property
    def n_images(self) -> int:
        return len(self.labels)


def evaluate_images(model, executors, images: np.ndarray, labels: np.ndarray, start: int,
                    checked: np.ndarray, batch_size: int,
                    track: Callable[[Iterable], Iterable] = lambda it: it) -> Shard:
    """fp32, fake-quant (on the ``checked`` positions only) and the simulator on ``images``, which are
    the images at positions ``start, start + 1, ...`` of the evaluation; ``executors`` are the
    (fake-quant integer-only, fake-quant float-nonlinear, simulator) of `simulator.engines.graph_executors`.
    ``track`` wraps the batch starts (a progress bar)."""
    import torch

    fq_int, fq_float, sim = executors
    checked = np.asarray(checked, dtype=np.int64)
    preds: dict[str, list] = {k: [] for k in EXECUTORS}
    seconds = dict.fromkeys(EXECUTORS, 0.0)
    exact, traces, mismatch = [], [], None
    for s in track(range(0, len(images), batch_size)):
        x = images[s:s + batch_size]
        lo = start + s
        rows = checked[(checked >= lo) & (checked < lo + len(x))] - lo
        t = time.perf_counter()
        with torch.no_grad():
            preds["fp32"].append(model(torch.as_tensor(x)).argmax(1).numpy())
        seconds["fp32"] += time.perf_counter() - t
        t = time.perf_counter()
        r_sim = sim.run(x, batch_size=batch_size, keep_codes=bool(len(rows)) and "digest")
        seconds["sim"] += time.perf_counter() - t
        preds["sim"].append(r_sim.predictions)
        traces.append(r_sim.trace)
        if not len(rows):
            continue
        xs = x if len(rows) == len(x) else x[rows]        # the checked images of this batch
        sim_digests = r_sim.digests.take(rows)
        del r_sim
        t = time.perf_counter()
        r_int = fq_int.run(xs, batch_size=batch_size, keep_codes="digest")
        seconds["fq_int"] += time.perf_counter() - t
        t = time.perf_counter()
        r_float = fq_float.run(xs, batch_size=batch_size, keep_codes=False)
        seconds["fq_float"] += time.perf_counter() - t
        preds["fq_int"].append(r_int.predictions)
        preds["fq_float"].append(r_float.predictions)
        ok = bit_exact_images(r_int.digests, sim_digests)
        exact.append(ok)
        if mismatch is None and not ok.all():      # the first mismatching image again, codes kept
            i = int(np.flatnonzero(~ok)[0])
            one = xs[i:i + 1]
            where = first_mismatch(fq_int.run(one, batch_size=1, keep_codes=True).codes,
                                   sim.run(one, batch_size=1, keep_codes=True).codes)
            mismatch = f"image {int(rows[i] + lo)}: " + (where or "digests differ, but a one-image rerun agrees")
        del r_int, r_float
    cat = {k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for k, v in preds.items()}
    return Shard(start=start, labels=np.asarray(labels), preds=cat, checked=checked,
                 exact=np.concatenate(exact) if exact else np.zeros(0, dtype=bool), mismatch=mismatch,
                 trace=Trace.concat(traces), seconds=seconds)


def merge_shards(shards: list[Shard]) -> Shard:
    """The shards of one evaluation (any order) as one, in image order."""
    shards = sorted(shards, key=lambda sh: sh.start)
    for a, b in zip(shards, shards[1:]):
        if a.start + a.n_images != b.start:
            raise ValueError(f"shards do not tile the images: {a.start}+{a.n_images} then {b.start}")
    return Shard(start=shards[0].start, labels=np.concatenate([sh.labels for sh in shards]),
                 preds={k: np.concatenate([sh.preds[k] for sh in shards]) for k in EXECUTORS},
                 checked=np.concatenate([sh.checked for sh in shards]),
                 exact=np.concatenate([sh.exact for sh in shards]),
                 mismatch=next((sh.mismatch for sh in shards if sh.mismatch is not None), None),
                 trace=Trace.concat([sh.trace for sh in shards]),
                 seconds={k: sum(sh.seconds[k] for sh in shards) for k in EXECUTORS})


def evaluation_summary(ev: Shard, record: dict) -> tuple[dict, dict]:
    """(the main job's JSON fields of an evaluation, per-executor bool arrays of correct predictions).

    Top-1 is over every image for fp32 and the simulator and over the checked images for fake-quant
    (``None`` when none were checked, ``--reference none``); so is ``bit_exact_images``."""
    from simulator.igq import overhead_bops

    labels, trace = ev.labels, ev.trace
    ref_labels = labels[ev.checked - ev.start]
    correct = {k: ev.preds[k] == (ref_labels if k in ("fq_int", "fq_float") else labels) for k in EXECUTORS}
    top1 = {_SUMMARY_KEYS[k]: float(np.mean(c)) * 100 if len(c) else None for k, c in correct.items()}
    grouping = np.array([overhead_bops([r]) for r in trace.layers], dtype=np.int64)
    fields = {
        "top1": top1,
        "reference": record,
        "bit_exact_images": int(ev.exact.sum()) if len(ev.checked) else None,
        "first_mismatch": ev.mismatch,
        "accumulator_overflows": dict(trace.overflows),
        "macs_per_image": round(trace.macs_per_image().mean()), "bops_per_image": round(trace.bops_per_image().mean()),
        "grouping_bops_per_image": round(float((trace.ran_mask().astype(np.int64) @ grouping).mean())),
        "executor_s": {_SUMMARY_KEYS[k]: v for k, v in ev.seconds.items()},
    }
    return fields, correct
