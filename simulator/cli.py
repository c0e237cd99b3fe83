"""``simulate``: the command line.

The CLI is the composition root: the only module under simulator/ that
imports `reference` (torch, timm) and `hwmodels`, lazily inside functions, so
the integer datapath itself stays free of them.

``simulate`` with no arguments runs the main job: the bundled digits ViT, the
digits test split, static W8A8, printing fp32 / fake-quant (integer-only and
float-nonlinear) / simulator top-1, ``bit-exact: N/N images`` and wall time.
User errors print ``simulate: error: <one line>`` and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from simulator.errors import InputError

__all__ = ["main", "RECIPE_DIR"]

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO_ROOT / "configs" / "recipes"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, via our error type
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="simulate", description="Bit-exact integer simulation and hardware cost of quantized ViTs.")
    p.add_argument("--model", default=None, help="timm ViT name (default: the bundled digits ViT)")
    p.add_argument("--checkpoint", default=None, help="local .pth/.safetensors weights (timm key names)")
    p.add_argument("--data", default=None, help="'digits' (default) or an ImageFolder directory")
    p.add_argument("--calib", default=None, help="calibration images: 'digits' or an ImageFolder (default: --data)")
    p.add_argument("--recipe", default=None,
                   help="recipe YAML, or a name under configs/recipes (default: static_w8a8)")
    p.add_argument("--wbits", type=int, default=None, help="override the recipe's weight bits")
    p.add_argument("--abits", type=int, default=None, help="override the recipe's activation bits")
    p.add_argument("--images", type=int, default=None, help="evaluate on the first N images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", default="auto", choices=("auto", "int_mm", "blas", "numba"),
                   help="simulator GEMM backend (all exact; default auto)")
    p.add_argument("--hw", nargs="+", default=None, metavar="NPU.yaml", help="accelerator YAML(s) to cost")
    p.add_argument("--save-qvit", default=None, metavar="PATH", help="write the frozen QuantizedViT (.npz)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_image_limit_flag(p)
    return p


def add_image_limit_flag(p: argparse.ArgumentParser) -> None:
    """--max-image-pixels (issue 18): ImageFolder images larger than this are refused before decoding."""
    p.add_argument("--max-image-pixels", type=int, default=89_478_485, metavar="N",
                   help="refuse ImageFolder images with more pixels than N (default 89478485, PIL's limit)")


def _max_pixels(args) -> int:
    n = getattr(args, "max_image_pixels", 89_478_485)
    if n <= 0:
        raise InputError(f"--max-image-pixels: expected a positive integer, got {n}")
    return n


def resolve_recipe(spec: str | None, wbits: int | None, abits: int | None):
    from reference.recipes.config import RecipeConfig, load_recipe, recipe_from_dict

    if spec is None:
        cfg = RecipeConfig()
    else:
        path = Path(spec)
        if not path.exists() and not spec.endswith((".yaml", ".yml")) and (RECIPE_DIR / f"{spec}.yaml").exists():
            path = RECIPE_DIR / f"{spec}.yaml"
        cfg = load_recipe(path)
    if wbits is not None or abits is not None:
        d = {k: v for k, v in cfg.__dict__.items()}
        d.update({k: v for k, v in (("w_bits", wbits), ("a_bits", abits)) if v is not None})
        cfg = recipe_from_dict(d, where="--wbits/--abits")
    return cfg


def write_json_atomic(path: str, payload: dict, flag: str = "--json") -> None:
    """Strict JSON, atomically (`simulator.atomic_files`); errors name ``flag`` and the path."""
    from simulator.atomic_files import write_json

    write_json(path, payload, f"{flag} {path}", default=_json_default)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _check_positive(args) -> None:
    _max_pixels(args)
    for name in ("images", "batch_size"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise InputError(f"--{name.replace('_', '-')}: expected a positive integer, got {v}")
    for path in [args.checkpoint, *(args.hw or [])]:
        if path is not None and not Path(path).is_file():
            raise InputError(f"{path}: no such file")
    from simulator.atomic_files import check_writable

    for flag, path in (("--json", args.json), ("--save-qvit", args.save_qvit)):
        if path is not None:
            check_writable(path, f"{flag} {path}")   # before the run: a read-only folder fails fast


def quantize_from_args(args, limit: int | None):
    """(QuantizedViT, test images) for --model/--checkpoint/--data/--calib/--recipe/--wbits/--abits."""
    from reference.data import load_dataset
    from reference.models import DEFAULT_MODEL, load_model
    from reference.recipes import quantize

    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise InputError(f"{args.checkpoint}: no such file")
    cfg = resolve_recipe(args.recipe, args.wbits, args.abits)
    model = load_model(args.model, args.checkpoint)
    images, _ = load_dataset(args.data, model, split="test", limit=limit, max_pixels=_max_pixels(args))
    if len(images) == 0:
        raise InputError(f"--data {args.data or 'digits'}: no images")
    calib, _ = load_dataset(args.calib if args.calib is not None else args.data, model, split="calib",
                            limit=cfg.calib_images, max_pixels=_max_pixels(args))
    return quantize(model, calib, cfg, model_name=args.model or DEFAULT_MODEL), images


def run_main(args) -> int:
    """Quantize, run fp32 / fake-quant / simulator, compare codes, print and save."""
    import torch
    from tqdm.auto import tqdm

    from reference.data import load_dataset
    from reference.fakequant import FakeQuantExecutor
    from reference.models import DEFAULT_MODEL, load_model
    from reference.recipes import quantize
    from simulator.executor import IntegerExecutor
    from simulator.results import bit_exact_images, first_mismatch

    _check_positive(args)
    t_start = time.perf_counter()
    cfg = resolve_recipe(args.recipe, args.wbits, args.abits)
    hw = None
    if args.hw:
        import hwmodels
        hw = [hwmodels.load(p) for p in args.hw]
    model_name = args.model or DEFAULT_MODEL
    model = load_model(args.model, args.checkpoint)
    images, labels = load_dataset(args.data, model, split="test", limit=args.images, max_pixels=_max_pixels(args))
    if len(images) == 0:
        raise InputError(f"--data {args.data or 'digits'}: no images to evaluate")
    calib_spec = args.calib if args.calib is not None else args.data
    calib, _ = load_dataset(calib_spec, model, split="calib", limit=cfg.calib_images, max_pixels=_max_pixels(args))
    t0 = time.perf_counter()
    qvit = quantize(model, calib, cfg, model_name=model_name)
    t_calib = time.perf_counter() - t0

    fq_int, fq_float = FakeQuantExecutor(qvit, "integer"), FakeQuantExecutor(qvit, "float")
    sim = IntegerExecutor(qvit, gemm_backend=args.backend)
    preds = {k: [] for k in ("fp32", "fq_int", "fq_float", "sim")}
    exact, mismatch, timings, trace, overflows = [], None, dict.fromkeys(("fp32", "fq_int", "fq_float", "sim"), 0.0), None, {}
    bs = args.batch_size
    ran, depth = [], []
    for s in tqdm(range(0, len(images), bs), desc="simulating", unit="batch", disable=True if args.no_progress else None):
        x = images[s:s + bs]
        t = time.perf_counter()
        with torch.no_grad():
            preds["fp32"].append(model(torch.as_tensor(x)).argmax(1).numpy())
        timings["fp32"] += time.perf_counter() - t
        results = {}
        for key, ex in (("fq_int", fq_int), ("fq_float", fq_float), ("sim", sim)):
            t = time.perf_counter()
            results[key] = ex.run(x, batch_size=bs, keep_codes=key != "fq_float")
            timings[key] += time.perf_counter() - t
            preds[key].append(results[key].predictions)
        exact.append(bit_exact_images(results["fq_int"].codes, results["sim"].codes))
        if mismatch is None:
            mismatch = first_mismatch(results["fq_int"].codes, results["sim"].codes)
        for name, n in results["sim"].trace.overflows.items():
            overflows[name] = overflows.get(name, 0) + n
        trace = results["sim"].trace
        ran.append(trace.ran_mask())
        depth.append(trace.extras.get("exit_depth"))
    trace.n_images, trace.overflows = len(images), overflows
    if trace.layer_ran is not None:   # early exits: per-image facts of every batch
        trace.layer_ran, trace.extras["exit_depth"] = np.concatenate(ran), np.concatenate(depth)
    exact = np.concatenate(exact)
    top1 = {k: float(np.mean(np.concatenate(v) == labels)) * 100 for k, v in preds.items()}
    wall = time.perf_counter() - t_start
    summary = {
        "model": model_name, "checkpoint": args.checkpoint, "data": args.data or "digits",
        "images": int(len(images)), "recipe": cfg.__dict__ | {"label": cfg.label},
        "top1": {"fp32": top1["fp32"], "fakequant_integer": top1["fq_int"],
                 "fakequant_float_nonlinear": top1["fq_float"], "simulator": top1["sim"]},
        "bit_exact_images": int(exact.sum()), "first_mismatch": mismatch,
        "accumulator_overflows": overflows,
        "macs_per_image": round(trace.macs_per_image().mean()), "bops_per_image": round(trace.bops_per_image().mean()),
        "wall_time_s": wall, "calibration_s": t_calib,
        "executor_s": {"fp32": timings["fp32"], "fakequant_integer": timings["fq_int"],
                       "fakequant_float_nonlinear": timings["fq_float"], "simulator": timings["sim"]},
    }
    _print_summary(summary, cfg.label)
    if hw:
        import hwmodels
        from hwmodels.report import format_comparison, format_report
        reports = [hwmodels.estimate(trace, npu) for npu in hw]
        print(format_report(reports[0]) if len(reports) == 1 else format_comparison(reports))
        summary["hardware"] = [r.to_dict() for r in reports]
    _write_outputs(args, qvit, summary)
    return 0


def _write_outputs(args, qvit, summary: dict) -> None:
    """--save-qvit and --json together: both files renamed into place, or neither."""
    from simulator.atomic_files import Batch, dumps_json

    with Batch() as batch:
        if args.save_qvit:
            batch.add(args.save_qvit, qvit.npz_writer(), f"--save-qvit {args.save_qvit}")
        if args.json:
            batch.add(args.json, dumps_json(summary, f"--json {args.json}", default=_json_default),
                      f"--json {args.json}")


def _print_summary(s: dict, label: str) -> None:
    t = s["top1"]
    print(f"model {s['model']}  data {s['data']} ({s['images']} images)  recipe {label}")
    print(f"  fp32 top-1                          {t['fp32']:6.2f}%")
    print(f"  fake-quant top-1 (integer-only)     {t['fakequant_integer']:6.2f}%")
    print(f"  fake-quant top-1 (float nonlinear)  {t['fakequant_float_nonlinear']:6.2f}%")
    print(f"  integer simulator top-1             {t['simulator']:6.2f}%")
    print(f"  bit-exact: {s['bit_exact_images']}/{s['images']} images"
          + ("" if s["first_mismatch"] is None else f"  (first mismatch: {s['first_mismatch']})"))
    ov = sum(s["accumulator_overflows"].values())
    print(f"  accumulator overflows (saturated): {ov}"
          + ("" if not ov else f" in {', '.join(sorted(s['accumulator_overflows']))}"))
    print(f"  MACs/image {s['macs_per_image'] / 1e6:.3f} M   BOPs/image {s['bops_per_image'] / 1e9:.3f} G")
    e = s["executor_s"]
    print(f"  wall time: {s['wall_time_s']:.1f} s (calibration {s['calibration_s']:.1f} s, fp32 {e['fp32']:.2f} s, "
          f"fake-quant {e['fakequant_integer']:.2f} s, simulator {e['simulator']:.2f} s)")


# Subcommands: name -> "module:function"; the function takes argv (list[str])
# and returns an exit code. Imported only when used.
SUBCOMMANDS: dict[str, str] = {
    "cost": "simulator.cost_command:cost_main",
    "export-vectors": "simulator.vectors:export_main",
    "verify-vectors": "simulator.vectors:verify_main",
    "sweep": "reports.sweep:main",
}

def _subcommand(name: str):
    import importlib

    module, func = SUBCOMMANDS[name].split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return _subcommand(argv[0])(argv[1:])
        args = build_parser().parse_args(argv)
        return run_main(args)
    except InputError as e:
        print(f"simulate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
