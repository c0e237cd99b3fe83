"""The design-review report: markdown tables + PNG figures from results.json.

Reads only the result JSON written by ``simulate sweep`` (a dict with
``sweep``, ``source``, ``breakdown`` and ``points``, one point per run x
accelerator), so a report can be regenerated, or read, without running
anything. Written files (in the output directory): ``report.md``,
``accuracy_vs_bops.png``, ``accuracy_vs_latency.png``,
``accuracy_vs_energy.png``, ``breakdown_<accel>.png`` (cycles and DRAM
traffic side by side, one figure per accelerator: the first shown, the
others behind a ``<details>`` selector), ``sqnr_<model>.png`` (per-tensor
SQNR vs fp32 by depth of the breakdown's points, from their run records'
``sqnr_layers``) and, when some point's cost varies per image,
``cycles_per_image.png``.

Points are numbered in the accuracy table (1..N, one number per model x
recipe); the figures mark each point with its number. BOPs include IGQ's
grouping overhead (its own column). The header gives the tool version, git
revision, date and every accelerator's parameters (from ``results.json``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from reports import figures
from reports.pareto import pareto_front
from simulator.atomic_files import ensure_dir, write_bytes
from simulator.significance import paired_test

__all__ = ["write_report", "summary_lines", "unique_runs", "fronts", "paired_rows", "MAX_BREAKDOWN"]

MAX_BREAKDOWN = 4


def unique_runs(points: list[dict]) -> list[dict]:
    """One point per run (model x recipe): BOPs and accuracy do not depend on the accelerator."""
    seen, out = set(), []
    for p in points:
        if p["run_key"] not in seen:
            seen.add(p["run_key"])
            out.append(p)
    return out


def _acc(p: dict) -> float:
    return p["top1"]["simulator"]


def fronts(points: list[dict]) -> dict[str, list[dict]]:
    """Pareto-optimal points per trade-off: BOPs incl. grouping (per run), latency and energy (per point)."""
    runs = unique_runs(points)
    out = {"bops": [runs[i] for i in pareto_front([_acc(p) for p in runs], [figures.total_bops(p) for p in runs])]}
    for metric in ("latency_ms", "energy_uj"):
        idx = pareto_front([_acc(p) for p in points], [p["cost"][metric] for p in points])
        out[metric] = [points[i] for i in idx]
    return out


def _chosen_for_breakdown(results: dict, front_bops: list[dict]) -> list[str]:
    """The sweep's ``report.breakdown`` labels, else the BOPs front plus the costliest run (<= 4)."""
    if results.get("breakdown"):
        return list(results["breakdown"])
    costliest = max(unique_runs(results["points"]), key=figures.total_bops)
    labels = list(dict.fromkeys([p["label"] for p in front_bops] + [costliest["label"]]))
    if len(labels) <= MAX_BREAKDOWN:
        return labels
    step = (len(labels) - 1) / (MAX_BREAKDOWN - 1)
    return [labels[round(i * step)] for i in range(MAX_BREAKDOWN)]


def numbering(points: list[dict]) -> dict[str, int]:
    """label -> point number (1..N, in the order of the accuracy table)."""
    return {p["label"]: k + 1 for k, p in enumerate(unique_runs(points))}


def _make_figures(results: dict, out: Path, front: dict) -> dict[str, list[Path]]:
    points, name = results["points"], results["sweep"]
    numbers = numbering(points)
    figs = {"tradeoff": [], "breakdown": [], "histogram": []}
    for metric, stem in (("bops", "accuracy_vs_bops"), ("latency_ms", "accuracy_vs_latency"),
                         ("energy_uj", "accuracy_vs_energy")):
        subset = unique_runs(points) if metric == "bops" else points
        path, _ = figures.tradeoff_figure(subset, metric, out / f"{stem}.png",
                                          title=f"{name}: accuracy vs {figures.METRICS[metric][0].split(' (')[0]}",
                                          numbers=numbers)
        figs["tradeoff"].append(path)
    chosen = _chosen_for_breakdown(results, front["bops"])
    for accel in dict.fromkeys(p["accelerator"] for p in points):
        sel = [p for label in chosen for p in points if p["label"] == label and p["accelerator"] == accel]
        if sel:
            figs["breakdown"].append(figures.accelerator_breakdown_figure(sel, out / f"breakdown_{accel}.png"))
    figs["sqnr"] = _sqnr_figures(results, out, chosen)
    hist = figures.cycle_histogram_figure(points, out / "cycles_per_image.png")
    if hist is not None:
        figs["histogram"].append(hist)
    return figs


def _sqnr_figures(results: dict, out: Path, chosen: list[str]) -> list[Path]:
    """``sqnr_<model>.png``: per-tensor SQNR vs fp32 by depth of the chosen runs (those of the breakdown
    figures), one figure per model; runs without SQNR rows (early exits, older records) are left out."""
    runs = [p for p in unique_runs(results["points"]) if p["label"] in chosen and p.get("sqnr_layers")]
    by_model: dict[str, dict[str, list]] = {}
    for p in runs:
        by_model.setdefault(p["model"]["name"], {})[p["label"]] = p["sqnr_layers"]
    paths = []
    for model, series in by_model.items():
        path = out / f"sqnr_{re.sub(r'[^A-Za-z0-9_.-]+', '_', model)}.png"
        images = max(p["images"] for p in runs if p["model"]["name"] == model)
        write_bytes(path, figures.sqnr_depth_png(series, f"{model}: per-tensor SQNR vs fp32 ({images} images)"))
        paths.append(path)
    return paths


def _bits(p: dict) -> str:
    r = p["recipe"]
    return f"W{r['w_bits']}A{r['a_bits']}"


def _accuracy_table(runs: list[dict], on_front: set) -> list[str]:
    rows = ["| # | point | model | bits | top-1 simulator % | 95% CI | top-1 fake-quant % | fp32 % | bit-exact | "
            "MACs / image (M) | BOPs / image (G) | grouping (G) | Pareto (BOPs) |",
            "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for k, p in enumerate(runs, 1):
        lo, hi = figures.accuracy_ci(_acc(p), p["images"])
        group = p.get("grouping_bops_per_image", 0.0)
        rows.append(f"| {k} | {p['label']} | {p['model']['name']} | {_bits(p)} | {_acc(p):.2f} | "
                    f"{lo:.1f}–{hi:.1f} | {p['top1']['fakequant_integer']:.2f} | {p['top1']['fp32']:.2f} | "
                    f"{p['bit_exact_images']}/{p['images']} | {p['macs_per_image'] / 1e6:.3f} | "
                    f"{p['bops_per_image'] / 1e9:.3f} | {group / 1e9:.3f} | "
                    f"{'★' if p['run_key'] in on_front else ''} |")
    return rows


def _correct(p: dict, n: int):
    """The run's per-image simulator correctness (bool array), or None for records without it."""
    import numpy as np

    hexbits = (p.get("correct") or {}).get("simulator")
    if not isinstance(hexbits, str):
        return None
    return np.unpackbits(np.frombuffer(bytes.fromhex(hexbits), dtype=np.uint8))[:n].astype(bool)


def paired_rows(runs: list[dict]) -> list[dict]:
    """McNemar's exact test (`simulator.significance.paired_test`) of every run against its baseline on
    the same images: the best static run (highest simulator top-1) of the same model, data and image
    count at the same W/A -- else at any W/A -- else, with no static run, the model's best run. A
    static run's baseline is the model's best static run at any W/A.
    One dict per compared run: ``label``, ``baseline``, ``a_only``/``b_only`` (images only the run /
    only the baseline gets right), ``p_value``, ``significant``."""
    groups: dict[tuple, list[dict]] = {}
    for p in runs:
        if _correct(p, p["images"]) is not None:
            m = p["model"]
            groups.setdefault((m.get("name"), m.get("checkpoint"), m.get("data"), p["images"]), []).append(p)
    out = []
    for members in groups.values():
        for p in members:
            statics = [q for q in members if q["recipe"]["recipe"] == "static"]
            same_bits = [q for q in statics if _bits(q) == _bits(p)]
            pool = statics if p in statics else (same_bits or statics or members)
            base = max(pool, key=_acc)
            if base is p:
                continue
            t = paired_test(_correct(p, p["images"]), _correct(base, base["images"]))
            out.append({"label": p["label"], "baseline": base["label"], "a_only": t.a_only, "b_only": t.b_only,
                        "p_value": t.p_value, "significant": t.significant, "top1": _acc(p), "baseline_top1": _acc(base)})
    return out


def _paired_table(runs: list[dict]) -> list[str]:
    rows = paired_rows(runs)
    if not rows:
        return ["No paired comparison: no two runs of one model on the same images carry per-image results."]
    numbers = {p["label"]: k + 1 for k, p in enumerate(runs)}
    lines = ["| # | point | top-1 % | baseline | baseline top-1 % | only the point right | only the baseline right "
             "| p (McNemar, exact) | significant at 0.05 |", "|---:|---|---:|---|---:|---:|---:|---:|:---:|"]
    for r in rows:
        lines.append(f"| {numbers[r['label']]} | {r['label']} | {r['top1']:.2f} | {r['baseline']} | "
                     f"{r['baseline_top1']:.2f} | {r['a_only']} | {r['b_only']} | {r['p_value']:.3g} | "
                     f"{'yes' if r['significant'] else 'no'} |")
    return lines


def _cost_table(points: list[dict], lat_front: set, energy_front: set) -> list[str]:
    """One row per point (run x accelerator)."""
    rows = ["| # | point | accelerator | top-1 % | cycles / image | latency (ms) | energy (µJ) | off-chip MB / image "
            "| PE util. | Pareto latency | Pareto energy |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|:---:|:---:|"]
    numbers = numbering(points)
    for p in points:
        c = p["cost"]
        rows.append(f"| {numbers[p['label']]} | {p['label']} | {p['accelerator']} | {_acc(p):.2f} | {c['cycles']:,.0f} | "
                    f"{c['latency_ms']:.4f} | {c['energy_uj']:.2f} | {c['offchip_mb']:.3f} | "
                    f"{c['pe_utilisation']:.1%} | {'★' if p['key'] in lat_front else ''} | "
                    f"{'★' if p['key'] in energy_front else ''} |")
    return rows


def _front_names(front: dict) -> list[str]:
    on = lambda pts: ", ".join(f"{p['label']} on {p['accelerator']}" for p in pts)  # noqa: E731
    return [f"* accuracy vs BOPs: {', '.join(p['label'] for p in front['bops'])}",
            f"* accuracy vs latency: {on(front['latency_ms'])}",
            f"* accuracy vs energy: {on(front['energy_uj'])}"]


def _accelerator_lines(results: dict) -> list[str]:
    """The accelerators' parameters, one table row each (from results.json's ``accelerators``)."""
    accels = results.get("accelerators") or {}
    if not accels:
        return []
    rows = ["| accelerator | file (sha256) | clock MHz | PE array | dataflow | precisions (MACs/PE/cycle) | "
            "memories (size, bandwidth B/cycle) | acc. bits |", "|---|---|---:|---|---|---|---|---:|"]
    for name, a in accels.items():
        sp, pe = a["spec"], a["spec"]["pe_array"]
        precisions = ", ".join(f"W{q['w_bits']}A{q['a_bits']} ×{q['macs_per_pe_per_cycle']:g}"
                               for q in pe["precisions"])
        mems = ", ".join(f"{m['name']} {_size(m['size_bytes'])} @{m['bandwidth_bytes_per_cycle']:g}"
                         for m in sp["memories"])
        rows.append(f"| {name} | `{os.path.basename(a['file'])}` ({a['sha256'][:12]}) | {sp['clock_mhz']:g} | "
                    f"{pe['rows']}×{pe['cols']} | {pe['dataflow']} | {precisions} | {mems} | {pe['acc_bits']} |")
    return ["## Accelerators", "", *rows, ""]


def _size(n: float) -> str:
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f:
            return f"{n / f:g} {unit}"
    return f"{n:g} B"


def _provenance(results: dict) -> str:
    tool = results.get("tool") or {}
    if not tool:
        return ""
    rev = f", git {tool['git_revision']}" if tool.get("git_revision") else ""
    return f"Made by {tool.get('name', 'vit-intsim')} {tool.get('version', '?')}{rev} on {tool.get('created_utc', '?')}."


def _breakdown_lines(figs: dict, rel) -> list[str]:
    """The first accelerator's breakdown inline; every other one behind its own <details> selector."""
    paths = figs["breakdown"]
    if not paths:
        return []
    lines = [f"![{Path(paths[0]).stem}]({rel(paths[0])})", ""]
    for f in paths[1:]:
        accel = Path(f).stem.removeprefix("breakdown_")
        lines += [f"<details><summary>{accel}</summary>", "", f"![{Path(f).stem}]({rel(f)})", "", "</details>", ""]
    return lines


def _markdown(results: dict, figs: dict, front: dict, out: Path) -> str:
    points = results["points"]
    runs = unique_runs(points)
    images = sorted({p["images"] for p in runs})
    rel = lambda path: os.path.relpath(path, out)  # noqa: E731
    lines = [f"# Design review: {results['sweep']}", ""]
    if _provenance(results):
        lines += [_provenance(results), ""]
    lines += [f"Sweep file `{results['source']}`: {len(runs)} quantized models x "
              f"{len({p['accelerator'] for p in points})} accelerators = {len(points)} points; "
              f"{'/'.join(map(str, images))} evaluation images per point. Accuracy is the integer "
              "simulator's top-1 with its exact binomial 95% confidence interval (Clopper-Pearson; one image is "
              f"{100 / max(images):.2f} points); *bit-exact* counts the images whose codes equal the fake-quant "
              "executor's at every tensor boundary. BOPs are GEMM BOPs plus IGQ's grouping overhead "
              "(BOP-equivalents, its own column). Costs are means per image (batch 1) from the hardware cost "
              "model; ★ marks Pareto-optimal points (max accuracy, min cost); # numbers the points in the "
              "figures.", "", *_accelerator_lines(results),
              "## Pareto-optimal points", "", *_front_names(front), "",
              "## Accuracy and work per model", "", *_accuracy_table(runs, {p["run_key"] for p in front["bops"]}),
              "", "## Paired comparisons", "",
              "Each point against its baseline on the same images: the best static point of the same model at "
              "the same bits (else at any bits; else the model's best point; for a static point, the "
              "model's best static point at any bits). McNemar's exact test counts only "
              "the images where the two disagree (only one of them right); *significant* means p < 0.05.", "",
              *_paired_table(runs),
              "", "## Cost per accelerator", "",
              *_cost_table(points, {p["key"] for p in front["latency_ms"]}, {p["key"] for p in front["energy_uj"]}),
              "", "## Trade-offs", ""]
    lines += [f"![{Path(f).stem}]({rel(f)})" for f in figs["tradeoff"]]
    lines += ["", "## Per-layer breakdown", "",
              "Cycles (left) and off-chip (DRAM) traffic (right) per image of the chosen points, per block and "
              "operator group; one figure per accelerator (open the others below the first).", ""]
    lines += _breakdown_lines(figs, rel)
    lines += ["## Where the error comes from", ""]
    lines += (["SQNR of every quantized tensor against the fp32 model on the same images (dB, higher is "
               "better), by depth in the graph, for the points of the breakdown figures; a drop shows the "
               "boundary where a recipe loses accuracy.", ""] + [f"![{Path(f).stem}]({rel(f)})" for f in figs["sqnr"]]
              if figs["sqnr"] else ["No per-tensor SQNR in these results (early-exit graphs have none)."])
    lines += ["", "## Per-image cycles", ""]
    lines += ([f"![cycles per image]({rel(f)})" for f in figs["histogram"]] if figs["histogram"] else
              ["Every point costs the same on every image, so there is no histogram: the cost model counts "
               "the operators an image executes, and only early exits change that count per image (igq's "
               "per-image grouping and scalepredictor's per-image scales change values, not operators)."])
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: str | os.PathLike) -> Path:
    """Write the figures and ``report.md`` into ``out``; returns the report path."""
    out = ensure_dir(out, f"--out {out}")
    front = fronts(results["points"])
    figs = _make_figures(results, out, front)
    target = out / "report.md"
    write_bytes(target, _markdown(results, figs, front, out).encode("utf-8"))
    return target


def summary_lines(results: dict) -> list[str]:
    """Plain-text summary: one row per run, cycles and energy per accelerator, the fronts."""
    points = results["points"]
    accels = list(dict.fromkeys(p["accelerator"] for p in points))
    by = {(p["run_key"], p["accelerator"]): p for p in points}
    w = max(len("point"), *(len(p["label"]) for p in points))
    head = f"{'point':<{w}} {'top-1 %':>7} {'bit-exact':>10} {'BOPs G':>8}" + "".join(
        f" {a + ' cycles':>18} {a + ' uJ':>14}" for a in accels)
    lines = [head, "-" * len(head)]
    for r in unique_runs(points):
        row = f"{r['label']:<{w}} {_acc(r):7.2f} {str(r['bit_exact_images']) + '/' + str(r['images']):>10} " \
              f"{figures.total_bops(r) / 1e9:8.3f}"
        for a in accels:
            c = by[(r["run_key"], a)]["cost"]
            row += f" {c['cycles']:18,.0f} {c['energy_uj']:14.2f}"
        lines.append(row)
    lines += ["Pareto-optimal:"] + [s.replace("* ", "  ", 1) for s in _front_names(fronts(points))]
    return lines
