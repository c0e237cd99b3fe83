"""``simulate sweep SWEEP.yaml``: run a design-review sweep and write its report.

Steps: validate the sweep YAML (`reports.sweep_config`); hash every run
(model x recipe config) and every point (run x accelerator)
(`reports.runpoint`); compute only the runs missing from the cache, in
parallel (`reports.engines`: processes, or Dask with ``--cluster``), caching
each as it finishes; cost every run on every accelerator; write
``results.json`` (every point of this sweep, the reports' only input) and the
markdown report with its figures (`reports.review`).

Output directory (``--out``, default ``out/sweeps/<name>``)::

    results.json        the points of this sweep (one record per run x accelerator), the accelerators'
                        parameters, the tool version, git revision and time
    results.csv         the same points as a table (one row per run x accelerator)
    report.md, *.png    the design-review report
    cache/runs/<key>.json, cache/points/<key>.json   content-addressed cache
    .plans/<key>.json   validated sweep files (without --out: out/sweeps/.plans)

A damaged cache entry (not a record of its key) is recomputed and rewritten.
Every file is written atomically with the user's umask (`simulator.atomic_files`).

A re-run of an unchanged sweep reads everything from the cache; an
interrupted one recomputes only the runs that had not finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from simulator.errors import InputError

__all__ = ["main", "run_sweep", "write_json_atomic"]

DEFAULT_OUT = Path("out") / "sweeps"


def build_parser() -> argparse.ArgumentParser:
    from simulator.cli import _Parser, add_logging_arguments

    p = _Parser(prog="simulate sweep", description="Run a design-review sweep and write its Pareto report. "
                "Every point's recipe, params and accelerator are validated before the first is computed.")
    p.add_argument("sweep", help="sweep YAML (e.g. configs/sweeps/quick.yaml)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default: out/sweeps/<sweep name>)")
    p.add_argument("--cache", default=None, metavar="DIR", help="cache directory (default: <out>/cache); may be shared")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="parallel runs (processes, or Dask workers "
                   "with --cluster local); 1 = in this process")
    p.add_argument("--cluster", default=None, metavar="ADDRESS|local",
                   help="run on Dask distributed: a scheduler address (tcp://host:8786) or 'local'")
    p.add_argument("--images", type=int, default=None, metavar="N",
                   help="override every model's image count (a seed-0 random subset; smoke runs)")
    p.add_argument("--json", action="store_true", help="print the points as JSON instead of the text summary")
    add_logging_arguments(p)
    return p


def write_json_atomic(path: Path, payload, label: str | None = None) -> None:
    """Strict JSON to a temp file beside ``path``, then renamed (`simulator.atomic_files`)."""
    from simulator.atomic_files import ensure_dir, write_json

    ensure_dir(Path(path).parent, label)
    write_json(path, payload, label, indent=1)


def _read_cached(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None      # missing or unreadable: recompute


_NUMBER = (int, float)
_RUN_FIELDS = {"label": str, "model": dict, "recipe": dict, "images": int, "top1": dict,
               "bit_exact_images": int, "accumulator_overflows": int, "macs_per_image": _NUMBER,
               "bops_per_image": _NUMBER, "run_key": str, "correct": dict}
_POINT_FIELDS = {"key": str, "accelerator": str, "accelerator_file": str, "offchip_level": str,
                 "clock_mhz": _NUMBER, "cost": dict, "distribution": dict, "layers": list}


def _has_fields(rec, fields: dict) -> bool:
    return isinstance(rec, dict) and all(
        isinstance(rec.get(k), t) and not isinstance(rec.get(k), bool) for k, t in fields.items())


def _valid_run(rec, key: str) -> bool:
    """A cache entry is used only if it is a run record of this key; anything else is recomputed
    (a damaged entry -- a list, ``{}``, a truncated file -- is a cache miss, not an error)."""
    from simulator.trace import Trace

    if not (_has_fields(rec, _RUN_FIELDS | {"trace": dict}) and rec["run_key"] == key):
        return False
    try:
        Trace.from_dict(rec["trace"])
    except Exception:   # any malformed trace: recompute   # noqa: BLE001
        return False
    return True


def _valid_point(point, key: str) -> bool:
    return _has_fields(point, _RUN_FIELDS | _POINT_FIELDS) and point["key"] == key


def _engine(args, todo, keys):
    from reports import engines
    from reports.runpoint import run_record

    if args.cluster:
        return engines.run_dask(run_record, todo, args.cluster, args.workers, keys)
    if args.workers > 1 and len(todo) > 1:
        return engines.run_processes(run_record, todo, args.workers)
    return engines.run_serial(run_record, todo)


def _compute_runs(spec, args, cache: Path) -> tuple[list[dict], int]:
    """Run records for every run of ``spec``, from the cache or computed; returns (records, n computed)."""
    from reports.runpoint import code_version, run_key
    from simulator.progress import Progress

    code = code_version()
    keys = [run_key(r, code) for r in spec.runs]
    records = [_read_cached(cache / "runs" / f"{k}.json") for k in keys]
    records = [rec if _valid_run(rec, k) else None for rec, k in zip(records, keys)]
    for run, rec in zip(spec.runs, records):
        if rec is not None:
            rec["label"] = run.label          # a label is presentation, not part of the content hash
    todo = [i for i, rec in enumerate(records) if rec is None]
    if not todo:
        return records, 0
    bar = Progress(len(todo), f"sweep {spec.name}: computing {len(todo)} of {len(records)} runs "
                   f"({len(records) - len(todo)} cached)", unit="run")
    try:
        for j, rec in _engine(args, [spec.runs[i] for i in todo], [keys[i] for i in todo]):
            i = todo[j]
            rec["run_key"] = keys[i]
            write_json_atomic(cache / "runs" / f"{keys[i]}.json", rec)
            records[i] = rec
            bar.update(postfix=f"{spec.runs[i].label}: {rec['run_seconds']:.0f} s")
    finally:
        bar.close()
    return records, len(todo)


def _cost_points(spec, runs: list[dict], cache: Path) -> list[dict]:
    from reports.runpoint import code_version, cost_point, point_key

    code, points = code_version(), []
    for run in runs:
        for hw in spec.accelerators:
            key = point_key(run["run_key"], hw, code)
            path = cache / "points" / f"{key}.json"
            point = _read_cached(path)
            if not _valid_point(point, key):
                point = cost_point(run, hw) | {"key": key}
                write_json_atomic(path, point)
            points.append(point | {"label": run["label"]})
    return points


def run_sweep(spec, args) -> tuple[Path, dict]:
    """Compute (or read) every point of ``spec`` and write results.json + the report."""
    from reports.review import write_report

    from simulator.atomic_files import ensure_dir

    out = ensure_dir(Path(args.out) if args.out else DEFAULT_OUT / spec.name, "--out")
    cache = ensure_dir(Path(args.cache) if args.cache else out / "cache", "--cache")
    t0 = time.perf_counter()
    runs, computed = _compute_runs(spec, args, cache)
    results = {"sweep": spec.name, "source": spec.source, "breakdown": list(spec.breakdown),
               "report_version": _report_version(), "accelerators": _accelerator_records(spec),
               "points": _cost_points(spec, runs, cache)}
    report = out / "report.md"
    previous = _read_cached(out / "results.json") or {}
    unchanged = {k: v for k, v in previous.items() if k != "tool"} == json.loads(json.dumps(results))
    if not (report.is_file() and unchanged):   # else: already drawn
        from simulator.provenance import tool_info

        results = {"tool": tool_info(), **results}
        write_json_atomic(out / "results.json", results)
        _write_csv(out / "results.csv", results)
        report = write_report(results, out)
    return report, {"runs": len(runs), "computed": computed, "seconds": time.perf_counter() - t0}


def _accelerator_records(spec) -> dict:
    """name -> file, content hash and every parameter, for the report header and the JSON."""
    import dataclasses

    import hwmodels
    from hwmodels.load import content_digest

    out = {}
    for path in spec.accelerators:
        npu = hwmodels.load(path)
        out[npu.name] = {"file": path, "sha256": content_digest(path), "spec": dataclasses.asdict(npu)}
    return out


CSV_COLUMNS = ("label", "model", "recipe", "w_bits", "a_bits", "images", "top1_simulator", "top1_fakequant_integer",
               "top1_fp32", "bit_exact_images", "macs_per_image", "bops_per_image", "grouping_bops_per_image",
               "accelerator", "cycles", "latency_ms", "energy_uj", "offchip_mb", "pe_utilisation")


def _write_csv(path: Path, results: dict) -> None:
    """``results.csv``: one row per point (run x accelerator), the numbers of the report's tables."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for p in results["points"]:
        c, r = p["cost"], p["recipe"]
        writer.writerow({"label": p["label"], "model": p["model"]["name"], "recipe": r["recipe"], "w_bits": r["w_bits"],
                         "a_bits": r["a_bits"], "images": p["images"], "top1_simulator": p["top1"]["simulator"],
                         "top1_fakequant_integer": p["top1"]["fakequant_integer"], "top1_fp32": p["top1"]["fp32"],
                         "bit_exact_images": p["bit_exact_images"], "macs_per_image": p["macs_per_image"],
                         "bops_per_image": p["bops_per_image"],
                         "grouping_bops_per_image": p.get("grouping_bops_per_image", 0.0),
                         "accelerator": p["accelerator"], **{k: c[k] for k in CSV_COLUMNS[14:]}})
    from simulator.atomic_files import ensure_dir, write_bytes

    ensure_dir(path.parent)
    write_bytes(path, buf.getvalue().encode())


def _report_version() -> str:
    """Hash of the report-drawing modules: a changed figure redraws even when no point changed."""
    import hashlib

    here = Path(__file__).resolve().parent
    return hashlib.sha256(b"".join((here / f).read_bytes() for f in ("figures.py", "review.py", "pareto.py"))
                          ).hexdigest()


def _apply_overrides(spec, args):
    from dataclasses import replace

    if args.images is None:
        return spec
    runs = tuple(replace(r, model=replace(r.model, images=args.images)) for r in spec.runs)
    return replace(spec, runs=runs)


def _plan_path(sweep: str, out: str | None) -> Path | None:
    """Where the validated plan of this exact sweep file (and code) is kept, or None if unreadable:
    ``<--out>/.plans/`` (``out/sweeps/.plans`` without ``--out``), never elsewhere."""
    import hashlib

    from reports.runpoint import code_version

    try:
        text = Path(sweep).read_bytes()
    except OSError:
        return None
    ident = [str(Path(sweep).resolve()), os.getcwd(), code_version(),
             (Path(__file__).parent / "sweep_config.py").read_text()]
    key = hashlib.sha256(text + json.dumps(ident).encode()).hexdigest()
    return (Path(out) if out else DEFAULT_OUT) / ".plans" / f"{key}.json"


def _spec_from_plan(cached):
    """The SweepSpec of a cached plan, or None if the plan is damaged (then it is rebuilt)."""
    from reports.sweep_config import ModelSpec, RunSpec, SweepSpec

    try:
        runs = tuple(RunSpec(r["label"], ModelSpec(**r["model"]), r["recipe"], r["batch_size"]) for r in cached["runs"])
        spec = SweepSpec(cached["name"], cached["source"], runs, tuple(cached["accelerators"]),
                         tuple(cached["breakdown"]))
        files = list(spec.accelerators) + [r.model.checkpoint for r in runs if r.model.checkpoint]
        return spec if all(isinstance(f, str) and Path(f).is_file() for f in files) else None
    except (KeyError, TypeError, AttributeError, ValueError):
        return None


def _load_spec(sweep: str, out: str | None = None):
    """Validate the sweep file, or reuse the plan validated from the same bytes with the same code.

    Validation imports the recipe registry (torch); the plan cache keeps an
    unchanged re-run free of it. Referenced files are re-checked on a hit.
    """
    from reports.sweep_config import load_sweep

    plan = _plan_path(sweep, out)
    cached = _read_cached(plan) if plan is not None else None
    spec = _spec_from_plan(cached) if cached is not None else None
    if spec is not None:
        return spec
    spec = load_sweep(sweep)
    if plan is not None:
        write_json_atomic(plan, {"name": spec.name, "source": spec.source, "accelerators": list(spec.accelerators),
                                 "breakdown": list(spec.breakdown),
                                 "runs": [{"label": r.label, "model": r.model.__dict__, "recipe": r.recipe,
                                           "batch_size": r.batch_size} for r in spec.runs]})
    return spec


def _check_inputs(spec, args) -> None:
    """Before any run: each model's checkpoint and image folders (light checks, no torch), and
    that the output and cache directories can be created."""
    from simulator import preflight

    where = spec.source
    for model in dict.fromkeys(r.model for r in spec.runs):
        try:
            preflight.check_checkpoint(model.checkpoint, model.name)
            preflight.check_data_for_model(model.data, model.name, None)
            preflight.scan_folder(model.data, "data")
            if model.calib is not None:
                preflight.scan_folder(model.calib, "calib")
        except InputError as e:
            raise InputError(f"{where}: model {model.name}: {e}") from None
    for flag, value in (("--out", args.out), ("--cache", args.cache)):
        if value is None:
            continue
        ancestor = Path(value).resolve()
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"sweep: {flag} {value}: {ancestor} is not a writable directory")


def main(argv: list[str]) -> int:
    """Entry point of ``simulate sweep``; `InputError` propagates to `simulator.cli.main`."""
    args = build_parser().parse_args(argv)
    for flag in ("workers", "images"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise InputError(f"sweep: --{flag}: expected a positive integer, got {value}")
    for flag in ("out", "cache"):
        value = getattr(args, flag)
        if value is not None and Path(value).exists() and not Path(value).is_dir():
            raise InputError(f"sweep: --{flag} {value}: is a file, expected a directory")
    spec = _apply_overrides(_load_spec(args.sweep, args.out), args)
    _check_inputs(spec, args)
    report, stats = run_sweep(spec, args)
    from reports.review import summary_lines     # matplotlib: only once there is something to draw

    results = json.loads((report.parent / "results.json").read_text())
    if args.json:
        slim = [{k: v for k, v in p.items() if k not in ("layers", "per_image_cycles")} for p in results["points"]]
        json.dump(slim, sys.stdout, indent=1)
        print()
    else:
        print("\n".join(summary_lines(results)))
        print(f"{stats['runs']} runs ({stats['computed']} computed, {stats['runs'] - stats['computed']} cached) "
              f"x {len(spec.accelerators)} accelerators in {stats['seconds']:.1f} s")
        print(f"report: {report}")
    return 0
