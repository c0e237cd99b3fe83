"""Cost reports: per-layer rows + per-image totals, as text or JSON-ready dicts.

Units: MB = 1e6 bytes, latency in ms at the NPU clock, energy in µJ.
images/s = 1000 / latency_ms: one image at a time (batch 1, no overlap
between consecutive images). Per-image totals are means over the traced
images; with a ``layer_ran`` mask (early exits) each image is charged the
layers it ran, and `CostReport.distribution` gives mean / p50 / p99.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from .spec import SFU_UNITS, NPUSpec

if TYPE_CHECKING:  # report.py never imports cost.py at run time (cost imports us)
    from .cost import LayerCost

__all__ = ["CostReport", "Distribution", "format_report", "format_comparison", "to_dict"]

_METRICS = ("macs", "bops", "cycles", "latency_ms", "energy_uj", "offchip_bytes")


@dataclass(frozen=True)
class Distribution:
    mean: float
    p50: float
    p99: float


@dataclass(frozen=True, eq=False)
class CostReport:
    """The cost of a trace on one NPU. ``ran`` is the bool [images, layers] mask."""

    npu: NPUSpec
    model: str
    recipe: str
    n_images: int
    layers: tuple["LayerCost", ...]
    ran: np.ndarray

    @cached_property
    def ran_fraction(self) -> np.ndarray:
        return self.ran.mean(axis=0)

    @cached_property
    def total(self) -> "LayerCost":
        """Mean cost per image: sum over layers of (fraction of images that ran it) x cost."""
        acc = None
        for cost, frac in zip(self.layers, self.ran_fraction):
            part = cost if frac == 1.0 else cost.scaled(float(frac))
            acc = part if acc is None else acc + part
        return acc

    def per_image(self, metric: str) -> np.ndarray:
        """One value per image of ``metric`` (one of macs, bops, cycles,
        latency_ms, energy_uj, offchip_bytes)."""
        if metric == "latency_ms":
            return self.per_image("cycles") * self.npu.ns_per_cycle / 1e6
        if metric == "energy_uj":
            vec = np.array([c.energy_pj for c in self.layers]) / 1e6
        elif metric in _METRICS:
            vec = np.array([float(getattr(c, metric)) for c in self.layers])
        else:
            raise ValueError(f"unknown metric {metric!r}; expected one of {_METRICS}")
        return self.ran.astype(np.float64) @ vec

    def distribution(self, metric: str) -> Distribution:
        v = self.per_image(metric)
        return Distribution(float(v.mean()), float(np.percentile(v, 50)), float(np.percentile(v, 99)))

    # per-image means, in the units of the report
    @property
    def macs(self) -> float:
        return float(self.total.macs)

    @property
    def bops(self) -> float:
        return float(self.total.bops)

    @property
    def offchip_mb(self) -> float:
        return self.total.offchip_bytes / 1e6

    @property
    def buffer_mb(self) -> float:
        return self.total.buffer_bytes / 1e6

    @property
    def cycles(self) -> float:
        return float(self.total.cycles)

    @property
    def latency_ms(self) -> float:
        return self.cycles * self.npu.ns_per_cycle / 1e6

    @property
    def images_per_s(self) -> float:
        return 1e3 / self.latency_ms if self.latency_ms else float("inf")

    @property
    def energy_uj(self) -> float:
        return self.total.energy_pj / 1e6

    @property
    def utilisation(self) -> float:
        return self.total.utilisation

    @property
    def bound(self) -> str:
        return self.total.bound

    @property
    def compute_bound_fraction(self) -> float:
        t = self.total
        return t.compute_bound_cycles / t.cycles if t.cycles else 0.0

    def sfu_elements(self) -> dict[str, float]:
        return {u: float(e) for u, e in zip(SFU_UNITS, self.total.sfu_elements) if e}

    def to_dict(self) -> dict:
        return to_dict(self)


# ------------------------------------------------------------------- JSON


def _npu_dict(npu: NPUSpec) -> dict:
    pe = npu.pe_array
    return {
        "name": npu.name, "source": npu.source, "clock_mhz": npu.clock_mhz,
        "array": f"{pe.rows}x{pe.cols}", "dataflow": pe.dataflow, "fold_overlap": pe.fold_overlap,
        "precisions": [p.label for p in pe.precisions], "double_buffering": npu.double_buffering,
        "memories": {m.name: m.size_bytes for m in npu.memories},
    }


def _levels(npu: NPUSpec, values) -> dict:
    return {m.name: float(v) for m, v in zip(npu.memories, values)}


def _layer_dict(npu: NPUSpec, c: "LayerCost", frac: float) -> dict:
    return {
        "name": c.name, "kind": c.kind, "unit": c.unit, "mode": c.mode, "ran_fraction": float(frac),
        "macs": float(c.macs), "bops": float(c.bops),
        "sfu_elements": {u: float(e) for u, e in zip(SFU_UNITS, c.sfu_elements) if e},
        "read_bytes": _levels(npu, c.read_bytes), "write_bytes": _levels(npu, c.write_bytes),
        "level_cycles": _levels(npu, c.level_cycles), "array_cycles": float(c.array_cycles),
        "compute_cycles": float(c.compute_cycles), "memory_cycles": float(c.memory_cycles),
        "cycles": float(c.cycles), "folds": float(c.folds), "offchip_blocks": int(c.offchip_blocks),
        "utilisation": c.utilisation, "bound": c.bound,
        "bound_level": npu.memories[c.bound_level].name, "energy_pj": c.energy_pj,
    }


def to_dict(r: CostReport) -> dict:
    """JSON-ready dict (plain floats/str) of a report."""
    t, npu = r.total, r.npu
    return {
        "npu": _npu_dict(npu), "model": r.model, "recipe": r.recipe, "n_images": r.n_images,
        "per_image": {
            "macs": r.macs, "bops": r.bops, "offchip_mb": r.offchip_mb, "buffer_mb": r.buffer_mb,
            "bytes_per_level": _levels(npu, np.add(t.read_bytes, t.write_bytes)),
            "cycles": r.cycles, "latency_ms": r.latency_ms, "images_per_s": r.images_per_s,
            "energy_uj": r.energy_uj, "pe_utilisation": r.utilisation, "bound": r.bound,
            "compute_bound_fraction": r.compute_bound_fraction,
            "energy_breakdown_uj": {
                "mac": t.energy_mac_pj / 1e6, "sfu": t.energy_sfu_pj / 1e6,
                **{f"mem_{m.name}": e / 1e6 for m, e in zip(npu.memories, t.energy_mem_pj)},
                "static": t.energy_static_pj / 1e6,
            },
            "sfu_elements": r.sfu_elements(),
            "sfu_cycles": {u: float(c) for u, c in zip(SFU_UNITS, t.sfu_cycles) if c},
        },
        "distribution": {m: vars(r.distribution(m)) for m in ("macs", "bops", "cycles",
                                                              "latency_ms", "energy_uj")},
        "layers": [_layer_dict(npu, c, f) for c, f in zip(r.layers, r.ran_fraction)],
    }


# ------------------------------------------------------------------- text


def _si(x: float, unit: str = "") -> str:
    for div, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3f} {p}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _npu_line(npu: NPUSpec) -> str:
    pe, gb = npu.pe_array, npu.global_buffer
    modes = "/".join(p.label for p in pe.precisions)
    return (f"{npu.name} ({npu.source}): {pe.rows}x{pe.cols} {pe.dataflow}, {modes}, "
            f"fold_overlap={pe.fold_overlap}, {npu.clock_mhz:g} MHz, {gb.name} "
            f"{gb.size_bytes / 1024:g} KiB, double_buffering={npu.double_buffering}")


_COLS = ("layer", "kind", "mode", "MACs", "ran", "offchip kB", "buffer kB", "compute cyc",
         "memory cyc", "cycles", "util", "bound", "energy nJ")


def _layer_row(npu: NPUSpec, c: "LayerCost", frac: float) -> tuple[str, ...]:
    bound = c.bound if c.bound == "compute" else f"mem:{npu.memories[c.bound_level].name}"
    return (c.name, c.kind, c.mode or c.unit, _si(c.macs), f"{frac:.0%}",
            f"{c.offchip_bytes / 1e3:.1f}", f"{c.buffer_bytes / 1e3:.1f}",
            f"{c.compute_cycles:.0f}", f"{c.memory_cycles:.0f}", f"{c.cycles:.0f}",
            f"{c.utilisation:.0%}" if c.macs else "-", bound, f"{c.energy_pj / 1e3:.1f}")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(s.ljust(w) if i < 3 else s.rjust(w)  # noqa: E731
                              for i, (s, w) in enumerate(zip(r, widths)))
    return [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]


def _totals_lines(r: CostReport) -> list[str]:
    t, npu = r.total, r.npu
    e = t.energy_pj or 1.0
    mem = ", ".join(f"{m.name} {v / e:.0%}" for m, v in zip(npu.memories, t.energy_mem_pj))
    sfu = ", ".join(f"{u} {el / 1e6:.3f} M el / {cy:,.0f} cyc"
                    for u, el, cy in zip(SFU_UNITS, t.sfu_elements, t.sfu_cycles) if el)
    lines = [
        f"per image ({r.n_images} image(s) traced, means):",
        f"  MACs {_si(r.macs)}   BOPs {_si(r.bops)}",
        f"  {npu.offchip.name} {r.offchip_mb:.3f} MB   {npu.global_buffer.name} {r.buffer_mb:.3f} MB",
        f"  cycles {r.cycles:,.0f}   latency {r.latency_ms:.4f} ms   {r.images_per_s:,.1f} images/s",
        f"  energy {r.energy_uj:.2f} uJ (MAC {t.energy_mac_pj / e:.0%}, SFU {t.energy_sfu_pj / e:.0%}, "
        f"{mem}, static {t.energy_static_pj / e:.0%})",
        f"  PE utilisation {r.utilisation:.1%}   bound: {r.bound} "
        f"({r.compute_bound_fraction:.0%} of cycles in compute-bound layers)",
        f"  SFU: {sfu or '-'}",
    ]
    if not r.ran.all():
        shows = (("cycles", lambda v: f"{v:,.0f}"), ("latency_ms", lambda v: f"{v:.4f} ms"),
                 ("bops", lambda v: _si(v)), ("energy_uj", lambda v: f"{v:.2f} uJ"))
        for m, show in shows:
            d = r.distribution(m)
            lines.append(f"  {m} over images: mean {show(d.mean)}  p50 {show(d.p50)}  p99 {show(d.p99)}")
    return lines


def format_report(r: CostReport) -> str:
    """Per-layer table followed by per-image totals, as text."""
    rows = [_layer_row(r.npu, c, f) for c, f in zip(r.layers, r.ran_fraction)]
    head = [_npu_line(r.npu), f"model {r.model}, recipe {r.recipe}", ""]
    return "\n".join(head + _table(_COLS, rows) + [""] + _totals_lines(r)) + "\n"


def format_comparison(reports: list[CostReport]) -> str:
    """Several NPUs side by side (one column each) on the per-image totals."""
    metrics = [
        ("array", lambda r: f"{r.npu.pe_array.rows}x{r.npu.pe_array.cols} "
                            f"{r.npu.pe_array.dataflow.split('_')[0]}"),
        ("clock MHz", lambda r: f"{r.npu.clock_mhz:g}"),
        ("MACs", lambda r: _si(r.macs)),
        ("BOPs", lambda r: _si(r.bops)),
        ("off-chip MB", lambda r: f"{r.offchip_mb:.3f}"),
        ("buffer MB", lambda r: f"{r.buffer_mb:.3f}"),
        ("cycles", lambda r: f"{r.cycles:,.0f}"),
        ("latency ms", lambda r: f"{r.latency_ms:.4f}"),
        ("images/s", lambda r: f"{r.images_per_s:,.1f}"),
        ("energy uJ", lambda r: f"{r.energy_uj:.2f}"),
        ("PE utilisation", lambda r: f"{r.utilisation:.1%}"),
        ("bound", lambda r: f"{r.bound} ({r.compute_bound_fraction:.0%} compute)"),
    ]
    header = ("per image",) + tuple(r.npu.name for r in reports)
    rows = [(name,) + tuple(f(r) for r in reports) for name, f in metrics]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    fmt = lambda row: "  ".join(s.ljust(w) if i == 0 else s.rjust(w)  # noqa: E731
                                for i, (s, w) in enumerate(zip(row, widths)))
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(row) for row in rows]
    sources = [f"  {r.npu.name}: {r.npu.source}" for r in reports]
    return "\n".join(lines + ["", "files:"] + sources) + "\n"
