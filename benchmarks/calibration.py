"""Calibration time of every recipe on the default model, against one fake-quant pass.

For each recipe YAML: the wall time of `reference.quantize` on the recipe's
calibration images (digits calib split, ``calib_images`` of the recipe), the
number of forward passes it ran (images walked by each op set -- float,
fake-quant, integer (apq: its block segments in whole-model passes) -- and
through timm's own forward, and float backward passes of the linearized
sensitivities, each divided by the number of calibration images), the wall time of ONE fake-quant pass (integer
nonlinear mode, no codes kept) of the frozen result over the same images, and
their ratio. With ``--accuracy``, also the fake-quant top-1 on the 360 test
digits.

    python benchmarks/calibration.py [--recipes static_w8a8 igq_w4a4 ...] [--accuracy] [--json out.json]

Prints a markdown table; no asserts (timings live here, never in tests).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np
import torch

from reference import load_dataset, load_model
from reference.fakequant_ops import FakeQuantOps, GraphFakeQuantExecutor
from reference.float_ops import FloatOps
from reference.recipes import quantize
from reference.recipes.config import load_recipe
from simulator import progress
from simulator.int_ops import IntOps

RECIPES = ("static_w8a8", "static_w4a4", "tsptq_w4a4", "igq_w4a4", "scalepredictor_w4a4", "apq")


class PassCounter:
    """Images through each op set's ``patchify`` (one per walked image) and through timm's forward."""

    def __init__(self, model):
        self.images: Counter = Counter()
        self._saved = []
        for cls, name in ((FloatOps, "float"), (FakeQuantOps, "fake-quant"), (IntOps, "integer")):
            orig = cls.patchify
            self._saved.append((cls, orig))
            cls.patchify = self._wrap(orig, name)
        self._hook = model.register_forward_hook(lambda m, args, out: self.images.update({"timm": len(args[0])}))
        self._grad = torch.autograd.grad

        def grad(outputs, inputs, grad_outputs=None, **kw):       # one backward pass over len(grad_outputs) images
            self.images["float backward"] += len(grad_outputs) if grad_outputs is not None else 1
            return self._grad(outputs, inputs, grad_outputs=grad_outputs, **kw)
        torch.autograd.grad = grad

    def _wrap(self, orig, name):
        def patchify(opset, op, images):
            self.images[name] += len(images)
            return orig(opset, op, images)
        return patchify

    def close(self):
        for cls, orig in self._saved:
            cls.patchify = orig
        self._hook.remove()
        torch.autograd.grad = self._grad


def measure(model, name: str, accuracy: bool, test, repeat: int = 1) -> dict:
    """Calibration and one fake-quant pass, each the least of ``repeat`` runs (alternating, so that
    a busy machine slows both alike)."""
    cfg = load_recipe(f"configs/recipes/{name}.yaml")
    calib, _ = load_dataset("digits", model, split="calib", limit=cfg.calib_images)
    t_cal = t_fq = float("inf")
    for i in range(repeat):
        counter = PassCounter(model)
        t0 = time.perf_counter()
        qg = quantize(model, calib, cfg, model_name="vit_digits")
        t_cal = min(t_cal, time.perf_counter() - t0)
        counter.close()
        if i == 0:
            passes = {k: v / len(calib) for k, v in counter.images.items()}
            if "apq_search" in qg.meta:    # block segments, in whole-model passes (patchify counts the stems only)
                passes["integer"] = qg.meta["apq_search"]["segment_passes"]
        t0 = time.perf_counter()
        GraphFakeQuantExecutor(qg).run(calib, keep_codes=False)
        t_fq = min(t_fq, time.perf_counter() - t0)
    row = {"recipe": name, "calib_images": len(calib), "calibration_s": t_cal, "fq_pass_s": t_fq,
           "ratio": t_cal / t_fq, "passes": passes, "total_passes": sum(passes.values())}
    if accuracy:
        x, y = test
        for mode in ("integer", "float"):
            r = GraphFakeQuantExecutor(qg, mode).run(x, keep_codes=False)
            row[f"fq_top1_{mode}"] = 100.0 * float(np.mean(r.predictions == y))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--accuracy", action="store_true", help="also fake-quant top-1 on the 360 test digits")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="least time of N alternating runs of each")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    progress.configure(not args.no_progress)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model()
    test = load_dataset("digits", model, split="test") if args.accuracy else None
    # warm-up: first-use costs (imports, numba compile of the integer executor) out of the timings
    warm = load_recipe("configs/recipes/static_w8a8.yaml")
    wcal, _ = load_dataset("digits", model, split="calib", limit=8)
    from simulator.int_ops import GraphIntegerExecutor
    GraphIntegerExecutor(quantize(model, wcal, warm, model_name="vit_digits")).run(wcal)
    rows = []
    print("| recipe | calib images | calibration s | one fq pass s | ratio | forward passes |"
          + (" fq top-1 int | fq top-1 float-nl |" if args.accuracy else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if args.accuracy else ""))
    for name in args.recipes:
        r = measure(model, name, args.accuracy, test, args.repeat)
        rows.append(r)
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["passes"].items()))
        acc = f" {r['fq_top1_integer']:.2f} | {r['fq_top1_float']:.2f} |" if args.accuracy else ""
        print(f"| {name} | {r['calib_images']} | {r['calibration_s']:.2f} | {r['fq_pass_s']:.3f} | "
              f"{r['ratio']:.1f} | {r['total_passes']:.1f} ({kinds}) |{acc}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
