"""Measure the scalepredictor recipe on the default model: static, degrees 1-3, oracle.

``python -m reference.scalepredictor_eval [--out reports/scale_premise/eval.json]``
prints a markdown table: top-1 of fake-quant (integer-only and float
nonlinear) and of the simulator, ``bit-exact: N/N``, BOPs and npu_int8 cycles
per image, and the predictor's share of the image cycles. The oracle applies
each test image's own MSE-optimal scales (`scalepredictor.oracle_log2`)
through the same integer datapath (both executors, ``log2_override``).
"""

from __future__ import annotations

import argparse


__all__ = ["evaluate", "main"]


def _row(label, q, test, labels, npu, override=None):
    import hwmodels
    from reference.fakequant import FakeQuantExecutor
    from simulator.executor import IntegerExecutor
    from simulator.results import bit_exact_images

    fq, ff, sim = FakeQuantExecutor(q), FakeQuantExecutor(q, "float"), IntegerExecutor(q)
    for ex in (fq, ff, sim):
        ex.log2_override = override
    n = len(test)
    rf, rff, ri = (ex.run(test, batch_size=n if override is not None else 64) for ex in (fq, ff, sim))
    rep = hwmodels.estimate(ri.trace, npu)
    pred = sum(c.cycles for c in rep.layers if c.kind == "scale_predictor")
    return {"config": label, "fq_int": 100 * float((rf.predictions == labels).mean()),
            "fq_float": 100 * float((rff.predictions == labels).mean()),
            "sim": 100 * float((ri.predictions == labels).mean()),
            "bit_exact": int(bit_exact_images(rf.codes, ri.codes).sum()), "n": n,
            "bops": float(ri.trace.bops_per_image().mean()), "cycles": float(rep.cycles),
            "predictor_cycles": float(pred), "predictor_pct": 100 * float(pred) / float(rep.cycles)}


def evaluate(bits_list=(4, 6), degrees=(1, 2, 3)) -> list[dict]:
    import hwmodels
    import reference
    from reference.recipes import quantize
    from reference.recipes.config import RecipeConfig
    from reference.recipes.scalepredictor import oracle_log2

    model = reference.load_model()
    calib, _ = reference.load_dataset("digits", model, split="calib")
    test, labels = reference.load_dataset("digits", model, split="test")
    npu = hwmodels.load("configs/npu_int8.yaml")
    rows = []
    for b in bits_list:
        qs = quantize(model, calib, RecipeConfig(w_bits=b, a_bits=b), model_name="vit_digits")
        rows.append({"bits": b, **_row("static", qs, test, labels, npu)})
        for d in degrees:
            q = quantize(model, calib, RecipeConfig(recipe="scalepredictor", w_bits=b, a_bits=b,
                                                    params={"degree": d}), model_name="vit_digits")
            rows.append({"bits": b, **_row(f"scalepredictor deg {d}", q, test, labels, npu)})
        rows.append({"bits": b, **_row("per-image oracle", q, test, labels, npu,
                                       override=oracle_log2(model, test, q))})
    return rows


def table(rows: list[dict]) -> str:
    out = ["| W/A | config | fake-quant int | fake-quant float-NL | simulator | bit-exact | BOPs/img | "
           "npu_int8 cycles/img | predictor cycles (%) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| W{r['bits']}A{r['bits']} | {r['config']} | {r['fq_int']:.2f} | {r['fq_float']:.2f} | "
                   f"{r['sim']:.2f} | {r['bit_exact']}/{r['n']} | {r['bops'] / 1e6:.1f} M | {r['cycles']:.0f} | "
                   f"{r['predictor_cycles']:.0f} ({r['predictor_pct']:.2f}%) |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference.scalepredictor_eval")
    ap.add_argument("--out", default="reports/scale_premise/eval.json")
    args = ap.parse_args(argv)
    rows = evaluate()
    from simulator.atomic_files import write_json

    write_json(args.out, rows, f"--out {args.out}", indent=1)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
