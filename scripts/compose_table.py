"""Composed mechanisms on the bundled digits ViT: the table of docs/graph.md ("Composing mechanisms").

For each row (``recipe: static`` + a list of mechanisms, 128 calibration images): top-1 of the
graph integer executor on the 360 test digits, ``bit-exact: N/N`` against the graph fake-quant
executor (every tensor), how many images leave after blocks 1 / 3 or run all 6, and the mean BOPs
per image as hwmodels charges them on ``configs/npu_int8.yaml`` (the depth each image ran).

Run from the repository root: ``python scripts/compose_table.py`` (about 10 minutes on 2 loaded
cores). Prints Markdown.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout, not an installed copy

TS, G, P, E = {"two_scaled": {}}, {"groups": {"groups": 2}}, {"predicted": {"degree": 2}}, {"exits": {"threshold": 0.9}}
ROWS = [((4, 8), []), ((4, 8), [TS, G]), ((4, 8), [TS, G, E]), ((8, 8), [E]), ((4, 4), [G, E]), ((4, 4), [G, P]),
        ((4, 4), [TS, P]), ((4, 4), [P, E]), ((4, 4), [TS, G, P, E])]


def main() -> None:
    import reference
    from hwmodels.cost import estimate
    from hwmodels.load import load
    from reference.fakequant_ops import GraphFakeQuantExecutor
    from reference.recipes.config import recipe_from_dict
    from simulator.int_ops import GraphIntegerExecutor
    from simulator.results import bit_exact_images

    model = reference.load_model()
    calib, _ = reference.load_dataset("digits", model, "calib")
    test, labels = reference.load_dataset("digits", model, "test")
    npu = load(str(Path(__file__).resolve().parents[1] / "configs" / "npu_int8.yaml"))
    print("| recipe | top-1 | bit-exact | leave after block 1 / 3 / run all 6 | BOPs per image |")
    print("|---|---|---|---|---|")
    for (w, a), mech in ROWS:
        cfg = recipe_from_dict({"recipe": "static", "w_bits": w, "a_bits": a, "calib_images": 128,
                                **({"mechanisms": mech} if mech else {})})
        qg = reference.quantize_graph(model, calib, cfg, model_name="vit_digits")
        ri, rf = GraphIntegerExecutor(qg).run(test), GraphFakeQuantExecutor(qg).run(test)
        exact = int(bit_exact_images(ri.codes, rf.codes).sum())
        d = ri.trace.extras.get("exit_depth")
        depths = "--" if d is None else " / ".join(str(int((d == k).sum())) for k in (2, 4, 6))
        bops = estimate(ri.trace, npu).per_image("bops").mean()
        print(f"| {cfg.label} | {100 * float((ri.predictions == labels).mean()):.2f}% | {exact}/{len(test)} | "
              f"{depths} | {bops / 1e6:.1f} M |", flush=True)


if __name__ == "__main__":
    main()
