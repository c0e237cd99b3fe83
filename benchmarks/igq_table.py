"""Measure the IGQ-ViT table on the default model: static vs igq (G = 1, 2, 4, 8 and the
budgeted allocation) at W4A4 and W6A6 -- top-1 of fake-quant (integer and float
nonlinear) and simulator, bit-exact images, BOPs and npu_int8 cycles per image.

    python benchmarks/igq_table.py [--images N]   (prints a markdown table)
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

import hwmodels
from reference import load_dataset, load_model
from reference.fakequant_ops import GraphFakeQuantExecutor as FakeQuantExecutor
from reference.recipes import quantize
from reference.recipes.config import load_recipe
from reference.recipes.igq_graph_allocation import graph_total_bops as total_bops
from simulator.int_ops import GraphIntegerExecutor as IntegerExecutor
from simulator.results import bit_exact_images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=None)
    args = ap.parse_args()
    model = load_model()
    x, y = load_dataset("digits", model, split="test", limit=args.images)
    npu = hwmodels.load("configs/npu_int8.yaml")
    print("| recipe | groups | fake-quant int | fake-quant float-nl | simulator | bit-exact | GBOPs/img | "
          "overhead | npu_int8 cycles/img |")
    print("|---|---|---|---|---|---|---|---|---|")
    for bits in (4, 6):
        static = load_recipe(f"configs/recipes/static_w{bits}a{bits}.yaml")
        igq = load_recipe(f"configs/recipes/igq_w{bits}a{bits}.yaml")
        calib, _ = load_dataset("digits", model, split="calib", limit=static.calib_images)
        points = [("static", "-", static)]
        points += [("igq", str(g), dataclasses.replace(igq, params={"groups": g})) for g in (1, 2, 4, 8)]
        points += [("igq", f"budget {igq.params['bop_budget']}", igq)]
        for name, groups, cfg in points:
            t = time.perf_counter()
            q = quantize(model, calib, cfg, model_name="vit_digits")
            tq = time.perf_counter() - t
            rf = FakeQuantExecutor(q, "integer").run(x)
            rfl = FakeQuantExecutor(q, "float").run(x, keep_codes=False)
            ri = IntegerExecutor(q).run(x)
            exact = int(bit_exact_images(rf.codes, ri.codes).sum())
            acc = [100.0 * float(np.mean(r.predictions == y)) for r in (rf, rfl, ri)]
            bops = total_bops(q)
            gemm = int(sum(r.bops for r in ri.trace.layers))
            rep = hwmodels.estimate(ri.trace, npu)
            if groups.startswith("budget"):
                groups += " " + str(q.meta["igq_groups"])
            print(f"| {cfg.label} | {groups} | {acc[0]:.2f} | {acc[1]:.2f} | {acc[2]:.2f} | {exact}/{len(x)} | "
                  f"{bops / 1e9:.4f} | {100 * (bops - gemm) / gemm:.2f}% | {rep.cycles:.0f} |"
                  f"  <!-- quantize {tq:.1f}s, overflows {ri.trace.overflows} -->", flush=True)


if __name__ == "__main__":
    main()
