"""Measure the APQ/MAQEE table of docs/recipes/apq.md on the bundled digits ViT.

Rows: fp32 full depth; static W8A8 full depth; exits at fp32 (threshold
chosen by the same risk-controlled walk as the recipe, on float exits);
exits + uniform W8A8 / W4A4 (configs/recipes/apq_exits_w*.yaml); apq
(configs/recipes/apq.yaml). Calibration: the digits train split (1437 images,
labels unused); evaluation: the 360-image test split. For every quantized row:
top-1 of the fake-quant (integer) and simulator executors, bit-exact images,
identical exit decisions, mean BOPs and npu_int8 cycles (mean / p50 / p99).

Usage: ``python scripts/measure_apq.py [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import hwmodels  # noqa: E402
from reference.apq_search import clopper_pearson_upper, exit_depths, fixed_sequence_walk  # noqa: E402
from reference.data import load_digits  # noqa: E402
from reference.exits import DEFAULT_EXITS_PATH, apply_thresholds, float_exit_outputs, load_exit_heads  # noqa: E402
from reference.fakequant_ops import GraphFakeQuantExecutor as FakeQuantExecutor  # noqa: E402
from reference.models import load_model  # noqa: E402
from reference.recipes import quantize  # noqa: E402
from reference.recipes.apq import parse_params  # noqa: E402
from simulator.int_ops import GraphIntegerExecutor as IntegerExecutor  # noqa: E402
from simulator.results import bit_exact_images  # noqa: E402

RECIPES = REPO_ROOT / "configs" / "recipes"


def float_exit_row(model, heads, calib, test_x, test_y, full_macs: float) -> dict:
    """Exits at fp32: risk-controlled shared threshold on float confidences, then test accuracy."""
    p = parse_params({})
    perm = np.random.default_rng(p.seed).permutation(len(calib))
    hold = perm[: int(round(len(calib) * p.holdout_fraction))]
    conf, pred, final = float_exit_outputs(model, heads, calib[hold])
    taus = (1.0,) + p.threshold_grid
    ks = [int((apply_thresholds(conf, pred, final, [t] * len(heads.after))[0] != final).sum()) for t in taus]
    delta = 1.0 - p.confidence
    passed = fixed_sequence_walk(ks, len(hold), p.risk_bound, delta)
    tau = taus[max(passed - 1, 0)]
    conf, pred, final = float_exit_outputs(model, heads, test_x)
    tp, first = apply_thresholds(conf, pred, final, [tau] * len(heads.after))
    depth = exit_depths(first, heads.after, len(model.blocks))
    macs = full_macs * depth.mean() / len(model.blocks)   # blocks dominate; exit heads are ~0.01 %
    return {"name": "exits fp32", "threshold": tau, "fp32_top1": 100 * float((tp == test_y).mean()),
            "mean_depth": float(depth.mean()), "mean_bops": macs * 32 * 32, "full_macs": full_macs,
            "holdout_upper_bound": clopper_pearson_upper(ks[max(passed - 1, 0)], len(hold), delta)}


def quantized_row(name, q, test_x, test_y, npu) -> dict:
    rf = FakeQuantExecutor(q).run(test_x)
    ri = IntegerExecutor(q).run(test_x)
    exact = bit_exact_images(rf.codes, ri.codes)
    rep = hwmodels.estimate(ri.trace, npu)
    cyc, bops = rep.distribution("cycles"), rep.distribution("bops")
    row = {"name": name, "fakequant_top1": 100 * float((rf.predictions == test_y).mean()),
           "simulator_top1": 100 * float((ri.predictions == test_y).mean()),
           "bit_exact": int(exact.sum()), "images": len(test_y),
           "mean_bops": bops.mean, "p50_bops": bops.p50, "p99_bops": bops.p99,
           "cycles_mean": cyc.mean, "cycles_p50": cyc.p50, "cycles_p99": cyc.p99,
           "block_bits": q.meta.get("block_bits"), "thresholds": q.meta.get("exit_thresholds")}
    if any(op.kind == "exit" for op in q.graph.ops):
        df, di = rf.trace.extras["exit_depth"], ri.trace.extras["exit_depth"]
        row.update(exit_decisions_identical=int((df == di).sum()), mean_depth=float(di.mean()),
                   depth_histogram={int(d): int((di == d).sum()) for d in np.unique(di)})
    if "apq" in q.meta:
        row["apq"] = {k: q.meta["apq"][k] for k in ("chosen", "pareto", "n_holdout", "certified")}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model()
    calib, _ = load_digits("train")
    test_x, test_y = load_digits("test")
    npu = hwmodels.load(str(REPO_ROOT / "configs" / "npu_int8.yaml"))
    with torch.no_grad():
        fp32 = 100 * float((model(torch.as_tensor(test_x)).argmax(1).numpy() == test_y).mean())
    rows = [{"name": "fp32 full depth", "fp32_top1": fp32}]
    static = quantize(model, calib[:128], RECIPES / "static_w8a8.yaml", model_name="vit_digits")
    rows.append(quantized_row("static W8A8 full depth", static, test_x, test_y, npu))
    full_macs = float(IntegerExecutor(static).run(test_x[:1]).trace.macs_per_image()[0])
    rows.append(float_exit_row(model, load_exit_heads(DEFAULT_EXITS_PATH, model), calib, test_x, test_y,
                               full_macs))
    for name, recipe in (("exits + W8A8", "apq_exits_w8a8.yaml"), ("exits + W4A4", "apq_exits_w4a4.yaml"),
                         ("apq", "apq.yaml")):
        q = quantize(model, calib, RECIPES / recipe, model_name="vit_digits")
        rows.append(quantized_row(name, q, test_x, test_y, npu))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "apq"}), flush=True)
    out = {"fp32_top1": fp32, "rows": rows}
    print(json.dumps(out, indent=1))
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
