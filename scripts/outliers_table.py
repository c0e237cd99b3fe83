"""Planted post-LayerNorm outliers on the bundled digits ViT: the table of docs/recipes/outliers.md.

Plants `OutlierSpec()` (5% of the channels of every norm1 / norm2 / final norm, alpha
log-uniform in [10, 40], seed 0; ``--spec`` to change it) into ``vit_digits`` and, for the
model before and after planting: fp32 top-1 on the 360 test digits, the spread of the
post-LayerNorm channel ranges (max / median of per-channel max|y|, median over the 13 norms),
and the graph integer executor's top-1 for static, tsptq and igq (its BOP-budget allocation, and
G = 4 fixed) at W8A8 and W4A4 (``configs/recipes/*.yaml``; igq W8A8 is igq_w4a4.yaml with 8-bit
weights and activations),
128 calibration images each.

Run from the repository root: ``python scripts/outliers_table.py [--spec SPEC] [--recipes static,tsptq]`` (about
15 minutes on 2 loaded cores). Prints Markdown.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout, not an installed copy

ROOT = Path(__file__).resolve().parents[1]
ROWS = [("static", "static_w8a8.yaml", {}), ("static", "static_w4a4.yaml", {}),
        ("tsptq", "tsptq_w8a8.yaml", {}), ("tsptq", "tsptq_w4a4.yaml", {}),
        ("igq (budget 1.01)", "igq_w4a4.yaml", {"w_bits": 8, "a_bits": 8}), ("igq (budget 1.01)", "igq_w4a4.yaml", {}),
        ("igq (G = 4)", "igq_w4a4.yaml", {"w_bits": 8, "a_bits": 8, "params": {"groups": 4}}),
        ("igq (G = 4)", "igq_w4a4.yaml", {"params": {"groups": 4}})]


def channel_spread(model, images) -> float:
    """Median over LayerNorms of (max / median) of the per-channel max |output| on ``images``."""
    import numpy as np
    import torch
    ranges, hooks = [], []
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, y: ranges.append(y.abs().reshape(-1, y.shape[-1]).amax(0).double().numpy())))
    with torch.no_grad():
        model(torch.as_tensor(images))
    for h in hooks:
        h.remove()
    return float(np.median([r.max() / np.median(r) for r in ranges]))


def main(argv=None) -> None:
    import numpy as np
    import torch

    import reference
    from reference.outliers import parse_outlier_spec, plant_outliers
    from reference.recipes.config import read_yaml, recipe_from_dict
    from simulator.int_ops import GraphIntegerExecutor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="default", help="OutlierSpec as inline YAML or a YAML file")
    p.add_argument("--recipes", default="static,tsptq,igq", help="comma-separated recipe names to run (default: all)")
    args = p.parse_args(argv)
    wanted = set(args.recipes.split(","))

    base = reference.load_model()
    planted = copy.deepcopy(base)
    report = plant_outliers(planted, parse_outlier_spec(args.spec))
    print(report.summary(), file=sys.stderr)
    calib, _ = reference.load_dataset("digits", base, "calib")
    test, labels = reference.load_dataset("digits", base, "test")
    with torch.no_grad():
        l0, l1 = base(torch.as_tensor(test)), planted(torch.as_tensor(test))
    top1 = lambda pred: 100 * float((np.asarray(pred) == labels).mean())   # noqa: E731
    print(f"fp32 top-1: {top1(l0.argmax(1)):.2f}% before, {top1(l1.argmax(1)):.2f}% after planting; "
          f"max |logit diff| {(l1 - l0).abs().max().item():.2e} (max |logit| {l0.abs().max().item():.1f}); "
          f"same prediction on {int((l0.argmax(1) == l1.argmax(1)).sum())}/{len(test)} images")
    print(f"post-LayerNorm channel spread (median over norms of max/median channel range): "
          f"{channel_spread(base, test):.1f} before, {channel_spread(planted, test):.1f} after\n")
    print("| recipe | W/A | simulator top-1, original | simulator top-1, planted | change |")
    print("|---|---|---|---|---|")
    for name, path, overrides in (row for row in ROWS if row[0].split()[0] in wanted):
        cfg = recipe_from_dict({**read_yaml(str(ROOT / "configs" / "recipes" / path), "recipe"), **overrides})
        acc = []
        for model in (base, planted):
            qg = reference.quantize_graph(model, calib, cfg, model_name="vit_digits")
            acc.append(top1(GraphIntegerExecutor(qg).run(test).predictions))
        print(f"| {name} | W{cfg.w_bits}A{cfg.a_bits} | {acc[0]:.2f}% | {acc[1]:.2f}% | {acc[1] - acc[0]:+.2f} pt |",
              flush=True)


if __name__ == "__main__":
    main()
