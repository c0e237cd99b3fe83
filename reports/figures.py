"""Matplotlib figures of a sweep, drawn from point records (result JSON) only.

* `tradeoff_figure`: simulator top-1 vs mean BOPs (GEMM + IGQ grouping
  overhead) / latency / energy per image, with the binomial 95% confidence
  interval of each accuracy (exact Clopper-Pearson interval over the point's images)
  as an error bar, the image count in the axis label, a log cost axis with
  1-2-5 ticks when the points span more than a decade, the Pareto front
  (`reports.pareto`) as the attainable staircase, and every point numbered
  (the report's tables give number -> point), numbers placed greedily so
  they overlap neither each other nor the markers.
* `breakdown_figure`: per-layer stacked bars of cycles or off-chip (DRAM)
  bytes per image, one panel per chosen point: x = embed / block i / head,
  stacks = operator groups; `accelerator_breakdown_figure` puts the cycles
  and the DRAM columns of one accelerator side by side in one figure.
* `cycle_histogram_figure`: per-image cycles of dynamic recipes (only when
  some point's cycles vary between images).
* `sqnr_depth_png`: per-tensor SQNR against the fp32 model by depth, one
  line per run (``simulate --layers`` and the report's "Where the error
  comes from" section).

Headless: the Agg backend, PNG files written to a temp name then renamed.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reports.pareto import pareto_front  # noqa: E402
from simulator.atomic_files import write_bytes  # noqa: E402
from simulator.significance import accuracy_interval  # noqa: E402

__all__ = ["tradeoff_figure", "breakdown_figure", "accelerator_breakdown_figure", "cycle_histogram_figure",
           "place_labels", "METRICS", "layer_group", "MAX_LABELLED", "accuracy_ci", "total_bops",
           "sqnr_depth_png"]

def total_bops(p: dict) -> float:
    """BOPs per image including IGQ's grouping overhead (BOP-equivalents; 0 for other recipes)."""
    return p["bops_per_image"] + p.get("grouping_bops_per_image", 0.0)


def accuracy_ci(top1_percent: float, n: int) -> tuple[float, float]:
    """The exact 95% interval (Clopper-Pearson, `simulator.significance`) of a top-1 given in percent
    over ``n`` images, in percent; [0, 100] without images."""
    if n <= 0:
        return 0.0, 100.0
    ci = accuracy_interval(round(top1_percent * n / 100), n)
    return 100 * ci.low, 100 * ci.high


#: metric -> (axis label, how to read it from a point record)
METRICS = {
    "bops": ("mean BOPs per image (10⁹ bit operations; MACs × w_bits × a_bits, + IGQ grouping overhead)",
             lambda p: total_bops(p) / 1e9),
    "cycles": ("mean cycles per image", lambda p: p["cost"]["cycles"]),
    "latency_ms": ("mean latency per image (ms, batch 1)", lambda p: p["cost"]["latency_ms"]),
    "energy_uj": ("mean energy per image (µJ)", lambda p: p["cost"]["energy_uj"]),
}
MAX_LABELLED = 14    # kept for callers; every point is numbered now
_MARKERS = "osD^vP*X<>"
_GROUPS = ("QKV / proj", "QKᵀ / AV", "fc1 / fc2", "embed / head GEMM", "softmax", "GELU", "LayerNorm",
           "requant / add", "other")
_GROUP_COLORS = dict(zip(_GROUPS, plt.get_cmap("tab10").colors))


def _save(fig, path: Path) -> Path:
    """PNG, written atomically with the user's umask (`simulator.atomic_files`)."""
    path = Path(path)
    try:
        write_bytes(path, lambda f: fig.savefig(f, dpi=130, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------ label layout


def place_labels(ax, xy: list[tuple[float, float]], texts: list[str], order: list[int] | None = None) -> list:
    """Annotate ``xy[i]`` with ``texts[i]`` at the first offset whose box hits no
    earlier label, marker or the axes edge; returns the annotations."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    disp = ax.transData.transform(np.asarray(xy, dtype=float))
    r = 5.0 * fig.dpi / 72       # marker half-size in pixels
    taken = [(x - r, y - r, x + r, y + r) for x, y in disp]
    frame = ax.get_window_extent(renderer)
    offsets = [(dx * s, dy * s) for s in (1, 2.2, 3.6, 5.2) for dx, dy in
               ((7, 5), (7, -11), (-7, 5), (-7, -11), (0, 11), (0, -17), (12, -3), (-12, -3))]
    placed = []
    for i in order if order is not None else range(len(xy)):
        best, best_hits = None, None
        for dx, dy in offsets:
            ann = ax.annotate(texts[i], xy[i], xytext=(dx, dy), textcoords="offset points", fontsize=7.5,
                              ha="left" if dx > 0 else "right" if dx < 0 else "center", va="bottom",
                              arrowprops=dict(arrowstyle="-", lw=0.5, color="0.45", shrinkA=0, shrinkB=3)
                              if abs(dx) > 10 or abs(dy) > 14 else None)
            bb = ann.get_window_extent(renderer)
            box = (bb.x0, bb.y0, bb.x1, bb.y1)
            hits = sum(_overlap(box, t) for t in taken) + (0 if _inside(box, frame) else 1)
            if best_hits is None or hits < best_hits:
                if best is not None:
                    best.remove()
                best, best_hits = ann, hits
            else:
                ann.remove()
            if hits == 0:
                break
        bb = best.get_window_extent(renderer)
        taken.append((bb.x0, bb.y0, bb.x1, bb.y1))
        placed.append(best)
    return placed


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(box, frame) -> bool:
    return box[0] >= frame.x0 and box[2] <= frame.x1 and box[1] >= frame.y0 and box[3] <= frame.y1


# ------------------------------------------------------------ trade-off plot


def _family(point: dict) -> str:
    return point["recipe"]["recipe"]


def tradeoff_figure(points: list[dict], metric: str, path: Path, title: str = "",
                    numbers: dict[str, int] | None = None) -> tuple[Path, list[int]]:
    """Accuracy (with 95% CI bars) vs ``metric`` with the Pareto front, every point numbered
    (``numbers``: label -> number, default by first appearance); returns (path, front indices)."""
    axis_label, value = METRICS[metric]
    x = np.array([value(p) for p in points], dtype=float)
    y = np.array([p["top1"]["simulator"] for p in points], dtype=float)
    ci = np.array([accuracy_ci(p["top1"]["simulator"], p["images"]) for p in points])
    front = pareto_front(list(y), list(x))
    fig, ax = plt.subplots(figsize=(7.6, 5.0))
    colour_key = _colour_key(points)
    accels = sorted({p["accelerator"] for p in points}) if metric != "bops" else []
    colors = dict(zip(dict.fromkeys(colour_key(p) for p in points), plt.get_cmap("tab10").colors * 4))
    markers = dict(zip(accels, _MARKERS))
    yerr = np.maximum(0.0, [y - ci[:, 0], ci[:, 1] - y])       # >= 0 despite rounding at 0 % / 100 %
    ax.errorbar(x, y, yerr=yerr, fmt="none", ecolor="0.6", elinewidth=0.8, capsize=2,
                zorder=1)
    for i, p in enumerate(points):
        ax.scatter(x[i], y[i], s=42, color=colors[colour_key(p)], marker=markers.get(p.get("accelerator"), "o"),
                   edgecolors="black" if i in front else "none", linewidths=1.2, zorder=3)
    if x.max() > 20 * max(x.min(), 1e-30):
        ax.set_xscale("log")
    _pad_limits(ax, x, np.concatenate([y, ci[:, 0], ci[:, 1]]))
    _cost_ticks(ax)
    fx, fy = x[front], y[front]
    ax.step(np.append(fx, ax.get_xlim()[1]), np.append(fy, fy[-1]), where="post", color="0.3", lw=1.2, ls="--",
            zorder=2)
    images = sorted({p["images"] for p in points})
    ax.set_xlabel(axis_label)
    ax.set_ylabel(f"top-1, integer simulator (%; {'/'.join(map(str, images))} images, 95% CI)")
    ax.set_title(title or f"Accuracy vs {axis_label.split(' (')[0]}")
    ax.grid(True, which="both", alpha=0.25)
    numbers = numbers or {lab: k + 1 for k, lab in enumerate(dict.fromkeys(p["label"] for p in points))}
    _legend(ax, {(f"{numbers[key]}  {key}" if key in numbers else key): c for key, c in colors.items()}, markers)
    texts, order = _merged_labels(points, x, y, list(front) + [i for i in range(len(points)) if i not in front],
                                  numbers)
    place_labels(ax, list(zip(x, y)), texts, order=order)
    return _save(fig, path), front


def _cost_ticks(ax) -> None:
    """Readable cost ticks: on a log axis 1-2-5 per decade with plain numbers (a narrow log axis
    otherwise shows one or two labels); on a linear axis matplotlib's own."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if ax.get_xscale() != "log":
        return
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _colour_key(points: list[dict]):
    """Colour by run label when there are few runs, else by recipe family."""
    labels = {p["label"] for p in points}
    return (lambda p: p["label"]) if len(labels) <= 10 else (lambda p: f"recipe: {_family(p)}")


def _merged_labels(points, x, y, order: list[int], numbers: dict[str, int]) -> tuple[list[str], list[int]]:
    """One number label per distinct (x, y): coincident points share one ("3,7")."""
    groups: dict[tuple[float, float], list[int]] = {}
    for i in order:
        groups.setdefault((float(x[i]), float(y[i])), []).append(i)
    texts = [str(numbers[p["label"]]) for p in points]
    for members in groups.values():
        texts[members[0]] = ",".join(dict.fromkeys(str(numbers[points[i]["label"]]) for i in members))
    return texts, [members[0] for members in groups.values()]


def _pad_limits(ax, x, y) -> None:
    lo, hi = y.min(), y.max()
    span = max(hi - lo, 1.0)
    ax.set_ylim(lo - 0.25 * span, hi + 0.3 * span)
    if ax.get_xscale() == "log":
        ax.set_xlim(x.min() / 1.8, x.max() * 1.8)
    else:
        xs = max(x.max() - x.min(), abs(x.max()) * 0.1, 1e-12)
        ax.set_xlim(x.min() - 0.2 * xs, x.max() + 0.25 * xs)


def _legend(ax, colors: dict, markers: dict) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=c, label=str(f)) for f, c in colors.items()]
    handles += [Line2D([], [], marker=m, ls="", color="0.4", label=f"accelerator: {a}") for a, m in markers.items()]
    handles += [Line2D([], [], marker="o", ls="", mfc="none", mec="black", label="on the front"),
                Line2D([], [], color="0.3", ls="--", label="Pareto front")]
    ax.legend(handles=handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)


# ------------------------------------------------------------ per-layer breakdown


def layer_group(name: str, kind: str) -> str:
    """Operator group of a trace layer, for the stacked breakdown."""
    leaf = name.rsplit(".", 1)[-1]
    if kind == "linear":
        return {"qkv": "QKV / proj", "proj": "QKV / proj", "fc1": "fc1 / fc2", "fc2": "fc1 / fc2"}.get(
            leaf, "embed / head GEMM")
    if kind in ("matmul", "shift_matmul"):
        return "QKᵀ / AV"
    return {"softmax": "softmax", "gelu": "GELU", "layernorm": "LayerNorm", "requantize": "requant / add",
            "quantize_input": "requant / add", "add": "requant / add"}.get(kind, "other")


def _position(name: str) -> str:
    m = re.match(r"blocks\.(\d+)\.", name)
    return f"block {m.group(1)}" if m else None


def _breakdown_matrix(layers: list[dict], field: str):
    positions, seen_block = [], False
    cells: dict[tuple[str, str], float] = {}
    for row in layers:
        pos = _position(row["name"])
        if pos is None:
            pos = "head" if seen_block else "embed"
        seen_block = seen_block or pos.startswith("block")
        if pos not in positions:
            positions.append(pos)
        key = (pos, layer_group(row["name"], row["kind"]))
        cells[key] = cells.get(key, 0.0) + row[field] * row["ran_fraction"]
    groups = [g for g in _GROUPS if any(cells.get((p, g), 0) for p in positions)]
    return positions, groups, np.array([[cells.get((p, g), 0.0) for p in positions] for g in groups])


def _breakdown_column(axes, points: list[dict], field: str) -> None:
    """Draw one stacked-bar panel per point into ``axes`` (a column)."""
    scale, unit = (1e3, "k cycles") if field == "cycles" else (1e3, "kB")
    for ax, p in zip(axes, points):
        positions, groups, mat = _breakdown_matrix(p["layers"], field)
        bottom = np.zeros(len(positions))
        for g, row in zip(groups, mat / scale):
            ax.bar(positions, row, bottom=bottom, color=_GROUP_COLORS[g], label=g, width=0.7)
            bottom += row
        total = mat.sum() / scale
        what = "" if field == "cycles" else f" of {p.get('offchip_level', 'off-chip')} traffic"
        ax.set_title(f"{p['label']} on {p['accelerator']}: {total:,.1f} {unit}{what} per image",
                     fontsize=9, loc="left")
        ax.set_ylabel(f"{unit} / image", fontsize=8)
        ax.grid(True, axis="y", alpha=0.25)
        ax.margins(y=0.08)
    axes[-1].set_xlabel("position in the network (operators of each block stacked by group)")
    axes[-1].tick_params(axis="x", labelrotation=30)


def _group_legend(fig_axes, anchor_ax) -> None:
    handles, labels = [], []
    for ax in fig_axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    anchor_ax.legend(handles, labels, fontsize=7.5, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def breakdown_figure(points: list[dict], field: str, path: Path) -> Path:
    """Stacked per-layer ``field`` ("cycles" or "offchip_bytes") for each point (one panel each)."""
    n = len(points)
    fig, axes = plt.subplots(n, 1, figsize=(8.2, 2.3 * n + 0.9), sharex=True, sharey=True, squeeze=False)
    _breakdown_column(axes[:, 0], points, field)
    _group_legend(axes[:, 0], axes[0, 0])
    return _save(fig, path)


def accelerator_breakdown_figure(points: list[dict], path: Path) -> Path:
    """One accelerator's chosen points: cycles (left) and off-chip traffic (right) per layer group."""
    n = len(points)
    fig, axes = plt.subplots(n, 2, figsize=(13.5, 2.3 * n + 1.1), sharex=True, squeeze=False)
    for col, field in enumerate(("cycles", "offchip_bytes")):
        _breakdown_column(axes[:, col], points, field)
        for ax in axes[1:, col]:
            ax.sharey(axes[0, col])
    _group_legend(axes.ravel(), axes[0, 1])
    fig.suptitle(f"Per-layer cycles and off-chip traffic on {points[0]['accelerator']}", fontsize=10, x=0.01,
                 ha="left")
    return _save(fig, path)


# ------------------------------------------------------------ per-image cycles


def cycle_histogram_figure(points: list[dict], path: Path) -> Path | None:
    """Histogram of per-image cycles for points whose cost varies per image; None if none does."""
    dynamic = [p for p in points if p.get("per_image_cycles")]
    if not dynamic:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 4.4))
    colors = plt.get_cmap("tab10").colors
    for i, p in enumerate(dynamic):
        v = np.asarray(p["per_image_cycles"], dtype=float) / 1e3
        ax.hist(v, bins=min(40, max(5, len(v) // 5)), histtype="step", lw=1.5, color=colors[i % 10],
                label=f"{p['label']} on {p['accelerator']} (mean {v.mean():,.1f}k, p99 "
                      f"{np.percentile(v, 99):,.1f}k)")
    ax.set_xlabel("cycles per image (thousands)")
    ax.set_ylabel("images")
    ax.set_title("Per-image cycles of dynamic recipes")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7.5)
    return _save(fig, path)


def _finite(db) -> bool:
    return db is not None and math.isfinite(db)


def sqnr_depth_png(series: dict[str, list[dict]], title: str) -> bytes:
    """PNG bytes: SQNR (dB, `reference.layer_error`) against depth (op index), one line per run label,
    from rows as in ``--layers`` / a run record's ``sqnr_layers``. Infinite (exact) tensors -- ``inf`` or
    ``None`` in JSON -- are drawn at the top of the axis."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    finite = [r["sqnr_db"] for rows in series.values() for r in rows if _finite(r["sqnr_db"])]
    top = max(finite, default=60.0) + 5
    for label, rows in series.items():
        x = [r["depth"] for r in rows]
        y = [r["sqnr_db"] if _finite(r["sqnr_db"]) else top for r in rows]
        ax.plot(x, y, marker=".", linewidth=1, label=label)
    blocks = {}
    for rows in series.values():
        for r in rows:
            if r["block"] is not None:
                blocks.setdefault(r["block"], r["depth"])
    for b, d in sorted(blocks.items()):
        ax.axvline(d - 0.5, color="0.85", linewidth=0.8, zorder=0)
        ax.text(d, 0.01, f"b{b}", fontsize=7, color="0.5", va="bottom", transform=ax.get_xaxis_transform())
    ax.set_xlabel("depth (op index in the graph; grey lines: block starts)")
    ax.set_ylabel("SQNR vs fp32 (dB)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()
