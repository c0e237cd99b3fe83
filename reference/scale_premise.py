"""ScalePredictor's premise, measured: do shallow range statistics predict deep scales?

ScalePredictor (seeds/001, 000) claims that the activation range of a shallow
layer predicts, per image, the optimal quantization scale of every deeper
layer. This module measures that claim on a model before any predictor is
built:

* the per-image **oracle** scale of every quantized activation boundary
  (``norm1, q, k, v, attn_out, norm2, gelu`` per block): the MSE-optimal
  symmetric scale of that image's own float tensor,
  ``reference.quantizers.calibrate(x_image, a_bits, "mse")`` -- the
  just-in-time calibration the paper avoids;
* candidate shallow statistics of the same image (max |x|, the 99th and
  99.9th percentile of |x|, the robust range p99.9 - p0.1, mean |x|) at the
  input patches, ``x0`` and the first block's residual/normalised tensors;
* their Pearson r with log2(oracle scale), R² = r² of the linear fit, and the
  held-out R² on the test images of a degree-3 polynomial fitted on the
  calibration images (what a predictor could actually achieve).

``python -m reference.scale_premise [--out reports/scale_premise]`` writes
``premise.md`` (tables), ``premise.json`` (all numbers) and ``premise.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from reference.quantizers import calibrate
from simulator.progress import Progress

__all__ = ["PREDICTED_BOUNDARIES", "SHALLOW_POINTS", "STATISTICS", "oracle_scales",
           "shallow_statistics", "premise_table", "main"]

PREDICTED_BOUNDARIES = ("norm1", "q", "k", "v", "attn_out", "norm2", "gelu")
SHALLOW_POINTS = ("input", "x0", "blocks.0.norm1", "blocks.0.x_mid", "blocks.0.x_out")
STATISTICS = ("max", "p99", "p99.9", "range99.9", "mean_abs")
FIT_DEGREE = 3


def _per_image(model, images: np.ndarray, batch_size: int = 64):
    """Yield ``{tensor: float64 array [B, ...]}`` per batch of the float32 walk of the lowered model
    (`reference.float_ops`; boundary names of docs/graph.md)."""
    from reference.float_ops import FloatOps
    from reference.lowering import lower
    from simulator.walk import walk

    graph = lower(model)
    ops = FloatOps(graph, torch.float32)
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = torch.as_tensor(np.asarray(images[s:s + batch_size], dtype=np.float32))
            out: dict = {}
            walk(graph, ops, x, lambda name, t: out.__setitem__(name, t.double().numpy()))
            yield out


def boundary_names(depth: int) -> list[str]:
    return [f"blocks.{i}.{b}" for i in range(depth) for b in PREDICTED_BOUNDARIES]


def _stat(v: np.ndarray, name: str) -> float:
    a = np.abs(v)
    if name == "max":
        return float(a.max())
    if name == "p99":
        return float(np.percentile(a, 99))
    if name == "p99.9":
        return float(np.percentile(a, 99.9))
    if name == "range99.9":
        return float(np.percentile(v, 99.9) - np.percentile(v, 0.1))
    if name == "mean_abs":
        return float(a.mean())
    raise ValueError(name)


def oracle_scales(model, images: np.ndarray, a_bits: int, depth: int) -> np.ndarray:
    """Per-image MSE-optimal scale of every predicted boundary: float [N, depth*7]."""
    names = boundary_names(depth)
    rows = []
    with Progress(len(images), f"oracle scales of {len(names)} boundaries", unit="img") as bar:
        for out in _per_image(model, images):
            for i in range(len(out["input"])):
                rows.append([calibrate(out[n][i], a_bits, "mse").scale for n in names])
                bar.update()
    return np.asarray(rows, dtype=np.float64)


def shallow_statistics(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """``{"<point>:<statistic>": float [N]}`` for every shallow point and statistic."""
    res: dict[str, list] = {}
    for out in _per_image(model, images):
        for p in SHALLOW_POINTS:
            for s in STATISTICS:
                res.setdefault(f"{p}:{s}", []).extend(_stat(v, s) for v in out[p])
    return {k: np.asarray(v) for k, v in res.items()}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def _heldout_r2(xc, yc, xt, yt, degree: int = FIT_DEGREE) -> float:
    """R² on the test set of a least-squares polynomial of x (centred, scaled) fitted on calib."""
    if xc.std() == 0:       # a constant statistic predicts nothing
        return 0.0
    c, w = np.median(xc), max(np.abs(xc - np.median(xc)).max(), 1e-12)
    coef = np.polynomial.polynomial.polyfit((xc - c) / w, yc, degree)
    pred = np.polynomial.polynomial.polyval(np.clip((xt - c) / w, -1, 1), coef)
    den = ((yt - yt.mean()) ** 2).sum()
    return float(1 - ((yt - pred) ** 2).sum() / den) if den > 0 else 0.0


def premise_table(stats_c, stats_t, oracle_c, oracle_t, names) -> dict:
    """Correlation of log2(oracle scale) with each statistic, per boundary (test images)."""
    table = {}
    lc, lt = np.log2(oracle_c), np.log2(oracle_t)
    for key in stats_t:
        rows = {}
        for j, n in enumerate(names):
            r = _pearson(stats_t[key], lt[:, j])
            rows[n] = {"r": r, "r2": r * r,
                       "heldout_r2": _heldout_r2(stats_c[key], lc[:, j], stats_t[key], lt[:, j])}
        table[key] = rows
    return table


def _atomic_write(path: Path, data: bytes) -> None:
    from simulator.atomic_files import write_bytes

    write_bytes(path, data)


def _markdown(result: dict) -> str:
    lines = ["# ScalePredictor premise: shallow range statistics vs per-image optimal scales", "",
             f"Model `{result['model']}`; {result['n_calib']} calibration / {result['n_test']} test images. "
             "Oracle = per-image MSE-optimal symmetric scale (`calibrate(x_image, a_bits, 'mse')`) of each "
             "quantized activation boundary. r = Pearson r of the statistic with log2(oracle scale) on the "
             "test images; R² = r²; held-out R² = R² on the test images of a degree-3 polynomial fitted "
             "on the calibration images (negative: worse than predicting the mean).", ""]
    for bits, res in result["bits"].items():
        lines += [f"## A{bits}", "", "Spread of the oracle itself (std of log2 scale across test images, "
                  "octaves) -- the most any per-image scale can move away from a static one:", "",
                  "| boundary | " + " | ".join(PREDICTED_BOUNDARIES) + " |",
                  "|---|" + "---|" * len(PREDICTED_BOUNDARIES)]
        for i in range(result["depth"]):
            vals = [res["oracle_log2_std"][f"blocks.{i}.{b}"] for b in PREDICTED_BOUNDARIES]
            lines.append(f"| block {i} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
        lines += ["", "Statistics ranked by median |r| over all boundaries (median r, median R², median "
                  "held-out R², fraction of boundaries with held-out R² > 0.5):", "",
                  "| statistic | median r | median R² | median held-out R² | held-out R² > 0.5 |",
                  "|---|---|---|---|---|"]
        for key, s in sorted(res["summary"].items(), key=lambda kv: -abs(kv[1]["median_r"])):
            lines.append(f"| {key} | {s['median_r']:+.3f} | {s['median_r2']:.3f} | "
                         f"{s['median_heldout_r2']:+.3f} | {s['frac_heldout_gt_0.5']:.2f} |")
        best = res["best"]
        lines += ["", f"Per boundary, for the best statistic `{best}` (r / held-out R²):", "",
                  "| block | " + " | ".join(PREDICTED_BOUNDARIES) + " |",
                  "|---|" + "---|" * len(PREDICTED_BOUNDARIES)]
        for i in range(result["depth"]):
            cells = [res["table"][best][f"blocks.{i}.{b}"] for b in PREDICTED_BOUNDARIES]
            lines.append(f"| {i} | " + " | ".join(f"{c['r']:+.2f} / {c['heldout_r2']:+.2f}" for c in cells) + " |")
        lines.append("")
    lines += ["## Verdict", "", result["verdict"], ""]
    return "\n".join(lines)


def _summaries(table: dict) -> dict:
    out = {}
    for key, rows in table.items():
        r = np.array([v["r"] for v in rows.values()])
        h = np.array([v["heldout_r2"] for v in rows.values()])
        out[key] = {"median_r": float(np.median(r)), "median_r2": float(np.median(r * r)),
                    "median_heldout_r2": float(np.median(h)), "frac_heldout_gt_0.5": float((h > 0.5).mean())}
    return out


def _plot(result: dict, stats_t: dict, oracle_t: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = list(result["bits"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ax = axes[0]
    names = boundary_names(result["depth"])
    for b in bits:
        best = result["bits"][b]["best"]
        ax.plot(range(len(names)), [result["bits"][b]["table"][best][n]["r"] for n in names], "o-",
                label=f"A{b}: r, {best}")
        ax.plot(range(len(names)), [result["bits"][b]["table"][best][n]["heldout_r2"] for n in names], "s--",
                label=f"A{b}: held-out R² (deg-3 fit), {best}")
    ax.set_xticks(range(0, len(names), len(PREDICTED_BOUNDARIES)))
    ax.set_xticklabels([f"block {i}" for i in range(result["depth"])])
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("predicted boundary (norm1, q, k, v, attn_out, norm2, gelu per block)")
    ax.set_ylabel("Pearson r / held-out R² vs log2(oracle scale)")
    ax.set_title("Correlation per boundary (test images)")
    ax.legend(fontsize=8)
    ax = axes[1]
    b = bits[0]
    best = result["bits"][b]["best"]
    x = stats_t[best]
    for n in result["bits"][b]["examples"]:
        y = np.log2(oracle_t[b][:, names.index(n)])
        ax.scatter(x, y - np.median(y), s=6, label=n)
    ax.set_xlabel(f"shallow statistic {best}")
    ax.set_ylabel("log2(oracle scale) - median  [octaves]")
    ax.set_title(f"A{b}: oracle scale vs shallow statistic, per test image")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from simulator.atomic_files import write_bytes

    try:
        write_bytes(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    finally:
        plt.close(fig)


def run_premise(model, calib, test, bits_list=(4, 6), model_name="vit_digits") -> tuple[dict, dict, dict]:
    depth = len(model.blocks)
    names = boundary_names(depth)
    stats_c, stats_t = shallow_statistics(model, calib), shallow_statistics(model, test)
    result = {"model": model_name, "depth": depth, "n_calib": len(calib), "n_test": len(test), "bits": {}}
    oracle_t = {}
    for b in bits_list:
        oc, ot = oracle_scales(model, calib, b, depth), oracle_scales(model, test, b, depth)
        oracle_t[b] = ot
        table = premise_table(stats_c, stats_t, oc, ot, names)
        summ = _summaries(table)
        best = max(summ, key=lambda k: summ[k]["median_heldout_r2"])
        h = {n: table[best][n]["heldout_r2"] for n in names}
        examples = [max(h, key=h.get), sorted(h, key=h.get)[len(h) // 2], min(h, key=h.get)]
        result["bits"][b] = {"table": table, "summary": summ, "best": best, "examples": examples,
                             "oracle_log2_std": {n: float(np.log2(ot[:, j]).std()) for j, n in enumerate(names)}}
    result["verdict"] = _verdict(result)
    return result, stats_t, oracle_t


def _verdict(result: dict) -> str:
    parts = []
    for b, res in result["bits"].items():
        s = res["summary"][res["best"]]
        strength = ("strong" if s["median_heldout_r2"] > 0.5 else "moderate" if s["median_heldout_r2"] > 0.2
                    else "WEAK")
        spread = np.median(list(res["oracle_log2_std"].values()))
        parts.append(f"A{b}: best statistic `{res['best']}`, median held-out R² {s['median_heldout_r2']:.2f} "
                     f"({strength}), median |r| {abs(s['median_r']):.2f}; the oracle scales themselves vary "
                     f"by a median {spread:.3f} octaves (std of log2) across images.")
    return " ".join(parts)


def main(argv=None) -> int:
    from reference.data import load_dataset
    from reference.models import load_model

    ap = argparse.ArgumentParser(prog="python -m reference.scale_premise")
    ap.add_argument("--out", default="reports/scale_premise")
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 6])
    args = ap.parse_args(argv)
    model = load_model()
    calib, _ = load_dataset("digits", model, split="calib")
    test, _ = load_dataset("digits", model, split="test")
    result, stats_t, oracle_t = run_premise(model, calib, test, tuple(args.bits))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "premise.json", json.dumps(result, indent=1).encode())
    _atomic_write(out / "premise.md", _markdown(result).encode())
    _plot(result, stats_t, oracle_t, out / "premise.png")
    print(result["verdict"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
