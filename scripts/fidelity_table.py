"""One fidelity table per bundled model: every recipe at W8A8 / W6A6 / W4A4, with intervals and paired tests.

The tables of docs/recipes/fidelity.md (issue 14). For each row (recipe x bit-width), on the model's
own test split:

* fake-quant (integer-only) and simulator top-1, each with its exact 95% Clopper-Pearson interval
  (`simulator.significance.accuracy_interval`);
* ``bit-exact N/N``: images whose codes agree at every tensor between the two executors;
* GBOPs per image (as hwmodels charges them, plus IGQ's grouping overhead in BOP-equivalents) and
  ``configs/npu_int8.yaml`` cycles per image (the depth each image ran, for early exits);
* the p-value of McNemar's exact test (`simulator.significance.paired_test`) of the row's simulator
  predictions against those of the **best static baseline** at the same bit-width (the static row,
  uniform calibrated or log2 softmax, with the higher simulator top-1), on the same images.

Rows: ``static`` with three post-softmax quantizers -- ``fixed`` (unsigned a_bits at 2^-a_bits, the
old default, shown because it collapses at long sequences), ``calibrated`` (uniform, scale by MSE)
and ``log2`` (FQ-ViT's log2 codes) -- then tsptq, igq with G = 2, G = 4 and the BOP-budget allocation
(budget 1.01), scalepredictor (degree 2) and apq (early exits with the risk-controlled threshold,
uniform blocks at the row's bit-width). 128 calibration images, except apq (``calib_images`` of its
YAML: the exit threshold is chosen on held-out calibration images).

``--outliers`` plants post-LayerNorm outlier channels first (`reference.outliers`, default
`OutlierSpec`: 5% of the channels of every norm1 / norm2 / final norm, alpha log-uniform in [10, 40],
seed 0) -- a function-preserving change, so fp32 is the same model.

Each finished row is stored in ``--state`` (JSON, written atomically), and a rerun skips the rows it
holds, so a long table can be built over several runs. Run from the repository root::

    python scripts/fidelity_table.py --model vit_clutter [--outliers] [--bits 8,6,4] [--rows static,igq_g2]
    python scripts/fidelity_table.py --model vit_clutter --render-only     # the table of the stored rows

Prints the table as Markdown (and ``--markdown PATH`` writes it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout, not an installed copy

ROOT = Path(__file__).resolve().parents[1]
CALIB = 128

# row name -> (label, recipe dict builder from bits)
ROWS = {
    "static_fixed": "static, fixed 2^-b softmax",
    "static_calibrated": "static, calibrated uniform softmax",
    "static_log2": "static, log2 softmax",
    "tsptq": "tsptq",
    "igq_g2": "igq, G = 2",
    "igq_g4": "igq, G = 4",
    "igq_budget": "igq, BOP budget 1.01",
    "scalepredictor": "scalepredictor (degree 2)",
    "apq": "apq (exits, uniform blocks)",
}
STATIC_BASELINES = ("static_calibrated", "static_log2")


def recipe_for(row: str, bits: int) -> dict:
    """The recipe dict of ``row`` at W``bits``A``bits`` (the YAMLs of configs/recipes/ with the bits set)."""
    from reference.recipes.config import read_yaml

    def yaml(name):
        return read_yaml(str(ROOT / "configs" / "recipes" / name), "recipe")

    wa = {"w_bits": bits, "a_bits": bits}
    if row.startswith("static"):
        softmax = {"static_fixed": None, "static_calibrated": {"scale": "calibrated"},
                   "static_log2": {"quantizer": "log2"}}[row]
        return {**yaml("static_w8a8.yaml"), **wa, "calib_images": CALIB,
                **({"params": {"softmax": softmax}} if softmax else {})}
    if row == "tsptq":
        return {**yaml(f"tsptq_w{bits}a{bits}.yaml" if bits in (4, 6, 8) else "tsptq_w4a4.yaml"), **wa,
                "calib_images": CALIB}
    if row.startswith("igq"):
        base = yaml("igq_w4a4.yaml")
        params = {k: v for k, v in base["params"].items() if k != "bop_budget"}
        params.update({"igq_g2": {"groups": 2}, "igq_g4": {"groups": 4},
                       "igq_budget": {"bop_budget": base["params"]["bop_budget"]}}[row])
        if "groups" in params:
            params.pop("candidates", None)
            params.pop("allocation_images", None)
        return {**base, **wa, "calib_images": CALIB, "params": params}
    if row == "scalepredictor":
        return {**yaml("scalepredictor_w4a4.yaml"), **wa, "calib_images": CALIB}
    if row == "apq":
        return {**yaml("apq_exits_w8a8.yaml"), **wa}
    raise SystemExit(f"fidelity_table: unknown row {row!r}; expected one of {', '.join(ROWS)}")


def _pack(mask) -> str:
    import numpy as np

    return np.packbits(np.asarray(mask, dtype=bool)).tobytes().hex()


def _unpack(hexbits: str, n: int):
    import numpy as np

    return np.unpackbits(np.frombuffer(bytes.fromhex(hexbits), dtype=np.uint8))[:n].astype(bool)


def measure_row(model, model_name, calib, test, labels, recipe: dict, npu, batch_size: int,
                exact_images: int) -> dict:
    """Quantize, run both executors over ``test`` in batches, cost the trace on ``npu``; codes are
    compared at every tensor on the first ``exact_images`` images (through per-image digests,
    `simulator.results.CodeDigests`), the rest run without them."""
    import numpy as np

    import reference
    from hwmodels.cost import estimate
    from reference.fakequant_ops import GraphFakeQuantExecutor
    from reference.recipes.config import recipe_from_dict
    from simulator.igq import overhead_bops
    from simulator.int_ops import GraphIntegerExecutor
    from simulator.results import bit_exact_images
    from simulator.trace import Trace

    t0 = time.perf_counter()
    cfg = recipe_from_dict(recipe, where="fidelity_table")
    qg = reference.quantize_graph(model, calib[:cfg.calib_images], cfg, model_name=model_name)
    t_calib = time.perf_counter() - t0
    fq, sim = GraphFakeQuantExecutor(qg, "integer"), GraphIntegerExecutor(qg)
    pred_fq, pred_sim, exact, traces = [], [], [], []
    for s in range(0, len(test), batch_size):
        x = test[s:s + batch_size]
        check = s < exact_images
        if check:
            x = x[:exact_images - s]
        r_fq, r_sim = fq.run(x, batch_size=batch_size, keep_codes=check and "digest"), \
            sim.run(x, batch_size=batch_size, keep_codes=check and "digest")
        pred_fq.append(r_fq.predictions)
        pred_sim.append(r_sim.predictions)
        if check:
            exact.append(bit_exact_images(r_fq.digests, r_sim.digests))
            if len(x) < batch_size and s + len(x) < len(test):   # the rest of this batch, without codes
                rest = test[s + len(x):s + batch_size]
                r_fq2, r_sim2 = (fq.run(rest, batch_size=batch_size, keep_codes=False),
                                 sim.run(rest, batch_size=batch_size, keep_codes=False))
                pred_fq.append(r_fq2.predictions)
                pred_sim.append(r_sim2.predictions)
                traces.append(r_sim.trace)
                r_sim = r_sim2
        traces.append(r_sim.trace)
    trace = Trace.concat(traces)
    cost = estimate(trace, npu)
    grouping = np.array([overhead_bops([r]) for r in trace.layers], dtype=np.int64)
    ran = trace.ran_mask().astype(np.int64)
    return {
        "recipe": recipe, "label": cfg.label, "images": int(len(test)),
        "correct_fq": _pack(np.concatenate(pred_fq) == labels),
        "correct_sim": _pack(np.concatenate(pred_sim) == labels),
        "bit_exact_images": int(np.concatenate(exact).sum()), "exact_checked": int(min(exact_images, len(test))),
        "gbops_per_image": float(cost.per_image("bops").mean() / 1e9 + (ran @ grouping).mean() / 1e9),
        "grouping_gbops_per_image": float((ran @ grouping).mean() / 1e9),
        "cycles_per_image": float(cost.per_image("cycles").mean()),
        "calibration_s": t_calib, "row_s": time.perf_counter() - t0,
    }


def render(state: dict, bits_list, rows) -> str:
    """The Markdown table of ``state`` (rows x bits), with the p-values against the best static row."""
    from simulator.significance import accuracy_interval, paired_test

    meta = state["meta"]
    n = meta["images"]
    fp32 = accuracy_interval(meta["fp32_correct"], n)
    out = [f"**{meta['title']}** -- {n} test images, fp32 top-1 {fp32}", "",
           "| W/A | recipe | fake-quant top-1 [95% CI] | simulator top-1 [95% CI] | bit-exact | GBOPs | "
           "npu_int8 kcycles | vs best static: p (McNemar) |",
           "|---|---|---|---|---|---|---|---|"]
    for bits in bits_list:
        got = {r: state["rows"].get(f"{r}@{bits}") for r in rows}
        statics = [r for r in STATIC_BASELINES if got.get(r)]
        best = max(statics, key=lambda r: _unpack(got[r]["correct_sim"], n).sum()) if statics else None
        for r in rows:
            rec = got[r]
            if rec is None:
                continue
            cf, cs = _unpack(rec["correct_fq"], n), _unpack(rec["correct_sim"], n)
            if best is None:
                vs = "n/a"
            elif r == best:
                vs = "best static"
            else:
                t = paired_test(cs, _unpack(got[best]["correct_sim"], n))
                mark = "**significant**" if t.significant else "not significant"
                diff = int(cs.sum()) - int(_unpack(got[best]["correct_sim"], n).sum())
                vs = f"{t.p_value:.3g} ({'+' if diff > 0 else '-' if diff < 0 else '='}{abs(diff)} images; {mark})"
            out.append(f"| W{bits}A{bits} | {ROWS[r]} | {accuracy_interval(int(cf.sum()), n)} | "
                       f"{accuracy_interval(int(cs.sum()), n)} | {rec['bit_exact_images']}/{rec.get('exact_checked', n)} | "
                       f"{rec['gbops_per_image']:.3f} | {rec['cycles_per_image'] / 1e3:.1f} | {vs} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    import numpy as np
    import torch

    import reference
    from hwmodels.load import load
    from simulator.atomic_files import write_bytes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_digits", help="a bundled model: vit_digits or vit_clutter")
    p.add_argument("--outliers", nargs="?", const="default", default=None,
                   help="plant post-LayerNorm outliers first (an OutlierSpec as inline YAML or a file)")
    p.add_argument("--bits", default="8,6,4", help="comma-separated bit-widths (WbAb)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of: {', '.join(ROWS)}")
    p.add_argument("--images", type=int, default=None, help="first N of a seed-0 shuffle of the test split")
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--exact-images", type=int, default=None,
                   help="compare codes at every tensor on the first N test images (default: all)")
    p.add_argument("--recheck-exact", action="store_true",
                   help="re-measure stored rows whose bit-exact check covered fewer images than the table "
                        "(their top-1 must come out the same; a difference is reported)")
    p.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: all cores)")
    p.add_argument("--state", default=None, help="JSON of finished rows (default reports/fidelity/<model>[_outliers].json)")
    p.add_argument("--markdown", default=None, help="also write the table here")
    p.add_argument("--render-only", action="store_true", help="print the table of the rows in --state; run nothing")
    args = p.parse_args(argv)
    bits_list = [int(b) for b in args.bits.split(",")]
    rows = [r for r in args.rows.split(",") if r]
    for r in rows:
        if r not in ROWS:
            raise SystemExit(f"fidelity_table: --rows: unknown row {r!r}; expected one of {', '.join(ROWS)}")
    tag = args.model + ("_outliers" if args.outliers else "")
    state_path = Path(args.state or ROOT / "reports" / "fidelity" / f"{tag}.json")
    state = json.loads(state_path.read_text()) if state_path.exists() else {"meta": None, "rows": {}}

    from simulator.engines import configure_threads

    configure_threads(args.threads)
    if args.render_only:
        if state["meta"] is None:
            raise SystemExit(f"fidelity_table: {state_path} holds no rows")
        table = render(state, bits_list, rows)
        print(table)
        if args.markdown:
            write_bytes(args.markdown, table.encode())
        return 0
    torch.manual_seed(0)
    model = reference.load_model(args.model)
    planted = None
    if args.outliers:
        from reference.outliers import parse_outlier_spec, plant_outliers

        planted = plant_outliers(model, parse_outlier_spec(args.outliers))
        print(planted.summary(), file=sys.stderr)
    data = {"vit_digits": "digits", "vit_clutter": "clutter"}[args.model]
    test, labels = reference.load_dataset(data, model, "test", limit=args.images)
    calib_all = {}
    with torch.no_grad():
        fp32 = np.concatenate([model(torch.as_tensor(test[s:s + 100])).argmax(1).numpy()
                               for s in range(0, len(test), 100)])
    meta = {"model": args.model, "data": data, "images": int(len(test)), "fp32_correct": int((fp32 == labels).sum()),
            "outliers": planted.to_dict() if planted is not None else None,
            "title": f"{args.model}{' + planted outliers' if planted is not None else ''} ({data})"}
    if state["meta"] is not None and {k: state["meta"][k] for k in ("model", "images")} != \
            {k: meta[k] for k in ("model", "images")}:
        raise SystemExit(f"fidelity_table: {state_path} holds another table ({state['meta']['title']}, "
                         f"{state['meta']['images']} images); pass another --state")
    state["meta"] = meta
    npu = load(str(ROOT / "configs" / "npu_int8.yaml"))
    for bits in bits_list:
        for r in rows:
            key = f"{r}@{bits}"
            old = state["rows"].get(key)
            if old is not None and not (args.recheck_exact and old["exact_checked"] < len(test)):
                continue
            recipe = recipe_for(r, bits)
            count = recipe.get("calib_images", CALIB)
            if count not in calib_all:
                calib_all[count] = reference.load_dataset(data, model, "calib", limit=count)[0]
            rec = measure_row(model, args.model, calib_all[count], test, labels, recipe, npu, args.batch_size,
                              len(test) if args.exact_images is None else args.exact_images)
            if old is not None:
                rec["rechecked_from"] = {"exact_checked": old["exact_checked"],
                                         "bit_exact_images": old["bit_exact_images"]}
                for k in ("correct_fq", "correct_sim"):
                    if rec[k] != old[k]:
                        print(f"{key}: {k} differs from the stored row (the row is not deterministic)",
                              file=sys.stderr, flush=True)
            state["rows"][key] = rec
            state_path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(state_path, json.dumps(state, indent=1).encode())
            print(f"{key}: simulator {100 * _unpack(rec['correct_sim'], len(test)).mean():.1f}%, "
                  f"bit-exact {rec['bit_exact_images']}/{rec['exact_checked']}, {rec['row_s']:.0f} s",
                  file=sys.stderr, flush=True)
    table = render(state, bits_list, rows)
    print(table)
    if args.markdown:
        write_bytes(args.markdown, table.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
