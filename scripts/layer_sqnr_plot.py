"""Per-tensor SQNR vs fp32 by depth for several recipes on the bundled model (docs/onnx.md, issue 17).

Freezes each recipe on the integer graph (digits calibration split), runs the
simulator on the digits test images, and compares every tensor with the
float walk (`reference.layer_error.boundary_sqnr`). Writes one plot with a
line per recipe (`simulator.layer_report.sqnr_plot_png`) and prints a
Markdown table of the per-block minimum and the logits' SQNR.

Usage (repository root):
``python scripts/layer_sqnr_plot.py --recipes static_w4a4 tsptq_w4a4 --out docs/figures/layers_sqnr_w4a4.png``
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", nargs="+", default=["static_w4a4", "tsptq_w4a4"])
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--out", default="docs/figures/layers_sqnr_w4a4.png")
    args = ap.parse_args()

    import reference
    from reference.layer_error import boundary_sqnr
    from reference.recipes.config import load_recipe
    from simulator.layer_report import sqnr_plot_png

    model = reference.load_model()
    calib, _ = reference.load_dataset("digits", model, "calib")
    test, labels = reference.load_dataset("digits", model, "test", limit=args.images)
    series = {}
    for name in args.recipes:
        cfg = load_recipe(f"configs/recipes/{name}.yaml")
        qg = reference.quantize_graph(model, calib, cfg)
        series[cfg.label] = boundary_sqnr(qg, test)
    png = sqnr_plot_png(series, f"vit_digits: per-tensor SQNR vs fp32 ({len(test)} digits test images)")
    with open(args.out, "wb") as f:
        f.write(png)
    blocks = sorted({r["block"] for rows in series.values() for r in rows if r["block"] is not None})
    print("| recipe | " + " | ".join(f"block {b} min" for b in blocks) + " | logits |")
    print("|---" * (len(blocks) + 2) + "|")
    for label, rows in series.items():
        mins = [min(r["sqnr_db"] for r in rows if r["block"] == b) for b in blocks]
        logit = next(r["sqnr_db"] for r in rows if r["tensor"] == "logits")
        print(f"| {label} | " + " | ".join(f"{m:.1f}" for m in mins) + f" | {logit:.1f} |")
    worst = {label: min(rows, key=lambda r: r["sqnr_db"] if math.isfinite(r["sqnr_db"]) else np.inf)
             for label, rows in series.items()}
    for label, r in worst.items():
        print(f"{label}: lowest {r['tensor']} {r['sqnr_db']:.1f} dB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
