"""``simulate --layers``: the SQNR of every tensor boundary against the fp32 model, and per-layer costs.

Prints one line per quantized tensor (SQNR in dB of the simulator's values
against the float walk on the evaluated images, `reference.layer_error`),
adds the rows to ``--json`` under ``"layers"``, and next to ``--json``
writes ``<stem>.layers.png`` (SQNR by depth, matplotlib) and
``<stem>.layers.csv`` (one row per trace record: shape, bits, MACs, BOPs,
and cycles / energy per accelerator of ``--hw``), from the run's own
QuantizedGraph. Part of the CLI's composition root: imports reference,
hwmodels and matplotlib lazily.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

__all__ = ["layer_rows", "print_layers", "sqnr_plot_png", "layer_costs_csv", "run_layers", "output_paths"]

log = logging.getLogger("simulator.cli")


def output_paths(json_path: str | None) -> tuple[str, str] | None:
    """(plot, csv) next to ``--json``: ``run.json`` -> ``run.layers.png``, ``run.layers.csv``."""
    if not json_path:
        return None
    p = Path(json_path)
    stem = p.with_suffix("") if p.suffix == ".json" else p
    return f"{stem}.layers.png", f"{stem}.layers.csv"


def layer_rows(qg, images, batch_size: int = 64) -> list[dict]:
    from reference.layer_error import boundary_sqnr

    return boundary_sqnr(qg, images, batch_size=batch_size)


def print_layers(rows: list[dict], label: str) -> None:
    print(f"per-tensor SQNR vs fp32 ({label}):")
    for r in rows:
        db = r["sqnr_db"]
        print(f"  {r['depth']:>4}  {r['tensor']:<34} {r['quantizer']:<11} {r['bits']:>2}b  "
              f"{'inf' if math.isinf(db) else f'{db:6.1f}'} dB")


def sqnr_plot_png(series: dict[str, list[dict]], title: str) -> bytes:
    """PNG bytes of `reports.figures.sqnr_depth_png` (the sweep report draws the same figure)."""
    from reports.figures import sqnr_depth_png

    return sqnr_depth_png(series, title)


def layer_costs_csv(trace, reports=()) -> str:
    """One row per trace record: shape, bits, MACs and BOPs per image, plus cycles and energy (pJ) per
    accelerator report (`hwmodels.estimate`)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = [f"{r.npu.name}_{k}" for r in reports for k in ("cycles", "energy_pj")]
    w.writerow(["layer", "kind", "m", "k", "n", "batch", "a_bits", "b_bits", "macs", "bops", *extra])
    for i, rec in enumerate(trace.layers):
        cost = [v for r in reports for v in (r.layers[i].cycles, r.layers[i].energy_pj)]
        w.writerow([rec.name, rec.kind, rec.m, rec.k, rec.n, rec.batch, rec.a_bits, rec.b_bits, rec.macs, rec.bops,
                    *[f"{v:.6g}" for v in cost]])
    return buf.getvalue()


def run_layers(args, cfg, images, qgraph, npus=()) -> dict:
    """The ``--layers`` work of the main command on the run's QuantizedGraph: rows printed and returned
    (for ``--json``); plot and cost CSV written next to ``--json``."""
    from simulator import progress
    from simulator.atomic_files import Batch

    with progress.phase(f"per-tensor SQNR on {len(images)} images"):
        from simulator.int_ops import GraphIntegerExecutor
        res = GraphIntegerExecutor(qgraph).run(images, args.batch_size)
        from reference.layer_error import boundary_sqnr
        rows = boundary_sqnr(qgraph, images, codes=res.codes, batch_size=args.batch_size)
    print_layers(rows, cfg.label)
    out = {"rows": rows}
    paths = output_paths(args.json)
    if paths:
        reports = []
        if npus:
            import hwmodels
            reports = [hwmodels.estimate(res.trace, npu) for npu in npus]
        png = sqnr_plot_png({cfg.label: rows}, f"{getattr(args, 'model', None) or 'vit_digits'}: per-tensor SQNR "
                                               f"vs fp32, {len(images)} images")
        with Batch() as batch:
            batch.add(paths[0], png, f"--layers plot {paths[0]}")
            batch.add(paths[1], layer_costs_csv(res.trace, reports).encode(), f"--layers csv {paths[1]}")
        out["plot"], out["costs_csv"] = paths
        log.info("wrote %s and %s", *paths)
    for r in rows:                  # JSON has no infinity: an exact tensor is null
        if not math.isfinite(r["sqnr_db"]):
            r["sqnr_db"] = None
    return out
