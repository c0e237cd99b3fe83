"""``simulate``: the command line.

The CLI is the composition root: the only module under simulator/ (with
cost_command.py, preflight.py and summary.py) that imports `reference` (torch, timm) and
`hwmodels`, lazily inside functions, so the integer datapath itself stays
free of them.

``simulate`` with no arguments runs the main job: the bundled digits ViT, the
digits test split, static W8A8, printing fp32 / fake-quant (integer-only and
float-nonlinear) / simulator top-1, ``bit-exact: N/N images`` and wall time.
Subcommands: ``cost``, ``sweep``, ``export-vectors``, ``verify-vectors``.

Every input is checked first (`simulator.preflight`), before torch, timm or
numba are imported, so a bad one fails in well under two seconds. User
errors print ``simulate: error: <one line>`` and exit 2; warnings are one
``simulate: warning: ...`` line each; progress and phase lines go to stderr
through `logging` (``--quiet``, ``--verbose``, ``--no-progress``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.bundled_models import default_data
from simulator.errors import InputError

__all__ = ["main", "RECIPE_DIR", "build_parser", "add_model_arguments", "add_logging_arguments",
           "configure_logging", "SUBCOMMANDS"]

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = REPO_ROOT / "configs" / "recipes"
log = logging.getLogger("simulator.cli")

# name -> ("module:function", one-line help); the function takes argv (list[str]) and returns an
# exit code. Imported only when used.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "cost": ("simulator.cost_command:cost_main",
             "hardware cost of a timm ViT from its shapes alone (no checkpoint, no images)"),
    "sweep": ("reports.sweep:main", "run a design-review sweep YAML and write its Pareto report"),
    "export-vectors": ("simulator.vectors:export_main",
                       "write every layer's integer tensors (npz + $readmemh hex + manifest) for RTL testbenches"),
    "verify-vectors": ("simulator.vectors:verify_main",
                       "check a vector set written by export-vectors (files, hashes, re-run)"),
    "export-onnx": ("simulator.onnx_command:export_main",
                    "write the quantized graph as a standard ONNX QDQ model (docs/onnx.md)"),
}
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, via our error type
        raise InputError(message)


def _version() -> str:
    from simulator.provenance import git_revision, tool_version

    rev = git_revision()
    return f"simulate (vit-intsim) {tool_version()}" + (f", git {rev}" if rev else "")


class _VersionAction(argparse.Action):
    """``--version``: computed only when asked (the git call stays off the normal path)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def add_model_arguments(p: argparse.ArgumentParser, data: bool = True) -> None:
    """The timm-style model flags (and, with ``data``, the image/recipe flags) shared by commands."""
    g = p.add_argument_group("model (timm)")
    g.add_argument("--model", default=None, help="timm ViT or Swin name, or a bundled model: 'vit_digits' "
                   "(default, 8x8 digits) or 'vit_clutter' (197 tokens, cluttered 56x56 digits); timm models are "
                   "built with pretrained=False, weights from --checkpoint")
    g.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="classifier rows (timm num_classes), e.g. for a fine-tuned checkpoint's head")
    g.add_argument("--img-size", type=int, default=None, metavar="PX",
                   help="input resolution (timm img_size; the patch grid and pos_embed follow)")
    g.add_argument("--mean", type=float, nargs="+", default=None, metavar="M",
                   help="input normalisation mean, 1 or 3 values (default: the model's)")
    g.add_argument("--std", type=float, nargs="+", default=None, metavar="S",
                   help="input normalisation std, 1 or 3 values (default: the model's)")
    g.add_argument("--crop-pct", type=float, default=None, metavar="F",
                   help="eval center-crop fraction in (0, 1] (default: the model's)")
    g.add_argument("--interpolation", default=None, choices=_INTERPOLATIONS,
                   help="eval resize interpolation (default: the model's)")
    if not data:
        return
    g.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="local .safetensors/.pth/.pt/.bin weights, read with timm's loader "
                        "(state_dict/model/EMA wrappers, 'module.' prefixes)")
    g.add_argument("--plant-outliers", default=None, metavar="SPEC",
                   help="stress variant: rescale a few post-LayerNorm channels and divide the next linear's "
                        "input columns (the float model is unchanged); SPEC is 'default', an inline YAML "
                        "mapping or a YAML file (reference/outliers.py, docs/recipes/outliers.md)")
    d = p.add_argument_group("data and recipe")
    d.add_argument("--data", default=None, metavar="DIR",
                   help="'digits' (the bundled 8x8 set), 'clutter' (cluttered 56x56 digits) or an ImageFolder "
                        "directory (<dir>/<class>/<image>); default: the bundled model's own set, else 'digits'")
    d.add_argument("--calib", default=None, metavar="DIR",
                   help="calibration images: 'digits', 'clutter' or an ImageFolder (default: --data)")
    d.add_argument("--recipe", default=None, metavar="R",
                   help="recipe YAML, or a name under configs/recipes (default: static_w8a8)")
    d.add_argument("--wbits", type=int, default=None, metavar="B", help="override the recipe's weight bits (2..8)")
    d.add_argument("--abits", type=int, default=None, metavar="B",
                   help="override the recipe's activation bits (2..8)")


def add_logging_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output verbosity")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="only warnings and errors on stderr (no progress or phase lines)")
    g.add_argument("-v", "--verbose", action="store_true", help="also debug lines on stderr")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars or progress lines (calibration, loading, executors, sweeps)")


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, SUBCOMMANDS)) + 2
    commands = "\n".join(f"  {name:<{width}}{text}" for name, (_, text) in SUBCOMMANDS.items())
    # The subcommands are dispatched by main() before this parser runs (each parses its own flags);
    # they are listed here rather than as argparse subparsers so that a mistyped flag's value is
    # never taken for a command name.
    p = _Parser(prog="simulate", usage="simulate [COMMAND] [options]",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Bit-exact integer simulation and hardware cost of quantized ViTs.\n\n"
                            "Without a COMMAND: quantize a model, run fp32, fake-quant and the integer simulator\n"
                            "on the evaluation images, compare their codes, and optionally cost the run on\n"
                            "accelerators.\n\n"
                            f"commands ('simulate COMMAND --help' lists a command's flags):\n{commands}")
    p.add_argument("--version", action=_VersionAction, help="print the tool version (and git revision) and exit")
    add_model_arguments(p)
    r = p.add_argument_group("run")
    r.add_argument("--images", type=int, default=None, metavar="N",
                   help="evaluate N images: a fixed seed-0 random subset (in the source's order), so a "
                        "small N still spans every class (default: all)")
    r.add_argument("--batch-size", type=int, default=64, metavar="N", help="executor batch size (default 64)")
    r.add_argument("--backend", default="auto",
                   choices=("auto", "numba", "int_mm", "blas_f32", "blas_f64", "blas"),
                   help="simulator GEMM backend, all exact (default auto: the fastest per shape class, "
                        "measured once on this machine and cached; simulator/kernels/gemm_choice.py)")
    r.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads of torch's and numba's pools (default: all cores this process may use)")
    r.add_argument("--engine", default="auto", metavar="{auto,graph}",
                   help="kept for scripts: every run uses the integer graph lowered from the model "
                        "(docs/graph.md); 'legacy' (the removed hand-written walks) is refused")
    r.add_argument("--hw", nargs="+", default=None, metavar="NPU",
                   help="accelerator YAML(s) to cost the run on; a bare name (npu_int8) means configs/<name>.yaml")
    add_evaluation_arguments(r)
    o = p.add_argument_group("outputs")
    o.add_argument("--json", default=None, metavar="PATH",
                   help="write every number (with tool version, git revision, time, accelerator parameters) as JSON")
    o.add_argument("--csv", default=None, metavar="PATH",
                   help="write the summary as CSV: one row per accelerator (one row without --hw)")
    o.add_argument("--save-qvit", default=None, metavar="PATH",
                   help="write the frozen QuantizedGraph (.npz, format_version 2)")
    o.add_argument("--layers", action="store_true",
                   help="print the SQNR (dB) of every tensor vs fp32; with --json also write <stem>.layers.png "
                        "(SQNR by depth) and <stem>.layers.csv (per-layer costs) next to it (simulator/layer_report.py)")
    add_logging_arguments(p)
    add_image_limit_flag(p)
    return p


def add_evaluation_arguments(g) -> None:
    """--reference, --reference-images, --cluster: how much of the fake-quant reference runs, and where
    the evaluation runs (`simulator.evaluation`, `simulator.dask_evaluation`)."""
    g.add_argument("--reference", default="sample", choices=("full", "sample", "none"),
                   help="how many images the fake-quant reference (and so the bit-exact check) runs on: "
                        "'full' every image; 'sample' (default) every image up to --reference-images, then a "
                        "fixed seed-0 random sample of that many; 'none' skips it (fp32 and the simulator "
                        "always run on every image)")
    g.add_argument("--reference-images", type=int, default=1000, metavar="N",
                   help="sample size of --reference sample (default 1000)")
    g.add_argument("--cluster", default=None, metavar="ADDRESS|local",
                   help="shard the evaluation's images over Dask workers: a scheduler address "
                        "(tcp://host:8786) or 'local' (one worker process per core); results are identical "
                        "to the in-process run (docs/cluster.md)")


def add_image_limit_flag(p: argparse.ArgumentParser) -> None:
    """--max-image-pixels (issue 18): ImageFolder images larger than this are refused before decoding."""
    p.add_argument("--max-image-pixels", type=int, default=89_478_485, metavar="N",
                   help="refuse ImageFolder images with more pixels than N (default 89478485, PIL's limit)")


def _max_pixels(args) -> int:
    n = getattr(args, "max_image_pixels", 89_478_485)
    if n <= 0:
        raise InputError(f"--max-image-pixels: expected a positive integer, got {n}")
    return n


class _StderrHandler(logging.Handler):
    """``simulate: <message>`` / ``simulate: warning: <message>`` on the current sys.stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
            sys.stderr.write(f"simulate: {level}{record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 -- logging must never raise
            self.handleError(record)


_LOGGERS = ("simulator", "reference", "reports", "hwmodels")


def configure_logging(quiet: bool = False, verbose: bool = False, progress: bool = True) -> None:
    """Route the project's loggers to stderr: INFO by default, WARNING with --quiet, DEBUG with --verbose."""
    from simulator import progress as progress_mod

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(h)
        logger.addHandler(_StderrHandler())
        logger.setLevel(level)
        logger.propagate = False
    progress_mod.configure(enabled=progress and not quiet)


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
    if dataclasses.is_dataclass(o) and not isinstance(o, type):   # frozen recipe params (mechanisms)
        return dataclasses.asdict(o)
    raise TypeError(type(o).__name__)


@dataclass(frozen=True)
class Plan:
    """What the preflight established: the recipe, the accelerators (distinct), the image folders."""

    cfg: object            # RecipeConfig
    npus: list             # list[NPUSpec]
    data: object           # FolderInfo or None (digits)
    calib: object          # FolderInfo or None (digits)


def preflight(args, outputs=()) -> Plan:
    """Check flags, recipe, accelerators, checkpoint, data and outputs; no torch/timm/numba import."""
    from simulator import preflight as pf

    pf.check_flags(args)
    if getattr(args, "engine", None) is not None:
        from simulator.engines import choose_engine

        choose_engine(args.engine)
    cfg = resolve_recipe(args.recipe, args.wbits, args.abits)
    npus = []
    if getattr(args, "hw", None):
        import hwmodels

        npus = hwmodels.load_distinct(args.hw)
    pf.check_checkpoint(args.checkpoint, args.model, args.num_classes, args.img_size)
    pf.check_data_for_model(args.data, args.model, args.img_size)
    data = pf.scan_folder(args.data, "--data")
    calib = pf.scan_folder(args.calib, "--calib") if args.calib is not None else data
    if args.calib is not None:
        pf.check_data_for_model(args.calib, args.model, args.img_size)
    pf.check_outputs(outputs)
    _max_pixels(args)
    from simulator.atomic_files import check_writable

    for flag, path in outputs:
        if path is not None:
            check_writable(path, f"{flag} {path}")   # a real write test: os.access passes for root
    log.debug("recipe %s: %s", cfg.label, {k: v for k, v in cfg.__dict__.items()})
    for npu in npus:
        log.debug("accelerator %s: %s", npu.name, npu.source)
    for flag, info in (("--data", data), ("--calib", calib)):
        if info is not None:
            log.debug("%s %s: %d images in %d classes", flag, info.root, info.n_images, len(info.classes))
    return Plan(cfg, npus, data, calib)


def load_model_from_args(args, random_weights_ok: bool = False):
    """The float model of --model/--checkpoint and the timm-style flags."""
    from reference.models import load_model

    return load_model(args.model, getattr(args, "checkpoint", None), num_classes=args.num_classes,
                      img_size=args.img_size, mean=args.mean, std=args.std, crop_pct=args.crop_pct,
                      interpolation=args.interpolation, random_weights_ok=random_weights_ok)


def data_warnings(model, plan: Plan) -> list[str]:
    """Warnings about the data for this model: class-count mismatch, images resized or converted.
    Logged once the images have loaded (a bad image is then the only stderr line)."""
    from PIL import Image

    from reference.models import model_input_config

    info, out = plan.data, []
    if info is None:
        return out
    if len(info.classes) != model.num_classes:
        out.append(f"--data {info.root}: {len(info.classes)} classes, but the model's head has {model.num_classes} "
                   "outputs (labels are the sorted folder index; pass --num-classes and a matching --checkpoint)")
    c, h, w = model_input_config(model)["input_size"]
    old_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None   # header only; the loader checks the size
    try:
        with Image.open(info.first_image) as im:
            size, mode = im.size, im.mode
    except Exception:  # noqa: BLE001 -- unreadable files are reported by the loader, naming the file
        return out
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if size != (w, h):
        out.append(f"--data {info.root}: images such as {Path(info.first_image).name} are {size[0]}x{size[1]}, "
                   f"the model's input is {w}x{h}: resized by its eval transform")
    if c == 1 and mode not in ("L", "1", "I", "I;16", "F"):
        out.append(f"--data {info.root}: {mode} images converted to grayscale for a 1-channel model")
    return out


def load_inputs(args, model, plan: Plan, limit: int | None, test_images: bool = True):
    """(test images, labels, calibration images), then the data and short-calibration warnings.
    ``test_images=False`` (the workers of ``--cluster`` load them): (None, None, calibration images)."""
    from reference.data import dataset_size, load_dataset

    cfg = plan.cfg
    pending = data_warnings(model, plan)
    data = args.data or default_data(args.model)
    images = labels = None
    if test_images:
        images, labels = load_dataset(data, model, split="test", limit=limit, max_pixels=_max_pixels(args))
    if (len(images) if test_images else dataset_size(data, "test", limit)) == 0:
        raise InputError(f"--data {data}: no images to evaluate")
    calib_spec = args.calib if args.calib is not None else data
    calib, _ = load_dataset(calib_spec, model, split="calib", limit=cfg.calib_images,
                            max_pixels=_max_pixels(args))
    for text in pending:
        log.warning("%s", text)
    if len(calib) < cfg.calib_images:
        log.warning("calibration: %d images in %s, recipe %s asks for %d; calibrating on %d",
                    len(calib), calib_spec, cfg.label, cfg.calib_images, len(calib))
    return images, labels, calib


def quantize_from_args(args, limit: int | None):
    """(QuantizedGraph, test images) for --model/--checkpoint/--data/--calib/--recipe/--wbits/--abits."""
    from simulator import progress

    for flag in ("num_classes", "img_size", "mean", "std", "crop_pct", "interpolation"):
        if not hasattr(args, flag):
            setattr(args, flag, None)
    plan = preflight(args)
    with progress.phase("importing torch, timm and numba"):
        from reference.recipes import quantize
    model = load_model_from_args(args)
    images, _, calib = load_inputs(args, model, plan, limit)
    with progress.phase(f"calibrating and freezing {plan.cfg.label}"):
        qg = quantize(model, calib, plan.cfg, model_name=args.model or "vit_digits")
    return qg, images


def run_main(args) -> int:
    """Check, quantize, run fp32 / fake-quant / simulator, compare codes, print and save."""
    from simulator import progress

    t_start = time.perf_counter()
    plan = preflight(args, [("--json", args.json), ("--csv", args.csv), ("--save-qvit", args.save_qvit)])
    cfg = plan.cfg
    from simulator.warm_start import start as start_kernel_warm_up

    start_kernel_warm_up()          # a cold numba cache fills in a helper process meanwhile (simulator/warm_start.py)
    with progress.phase("importing torch, timm and numba"):
        from reference.models import DEFAULT_MODEL
        from simulator.engines import configure_threads, graph_quantizer
        from simulator.evaluation import evaluation_summary
        from simulator.summary import accelerator_record, print_summary, significance_record
    threads = configure_threads(args.threads)
    model_name = args.model or DEFAULT_MODEL
    planted = None
    if getattr(args, "plant_outliers", None) is not None:
        from reference.outliers import parse_outlier_spec
        outlier_spec = parse_outlier_spec(args.plant_outliers)        # a bad spec fails before the model builds
    with progress.phase(f"building {model_name}"):
        model = load_model_from_args(args)
    if getattr(args, "plant_outliers", None) is not None:
        from reference.outliers import plant_outliers
        planted = plant_outliers(model, outlier_spec)
        log.info("%s", planted.summary())
    images, labels, calib = load_inputs(args, model, plan, args.images,
                                        test_images=args.cluster is None or args.layers)
    engine = "graph"
    t0 = time.perf_counter()
    with progress.phase(f"calibrating and freezing {cfg.label} on {len(calib)} images"):
        qg = graph_quantizer(cfg.recipe)(model, calib, cfg, model_name=model_name)
    t_calib = time.perf_counter() - t0

    ev, reference, cluster, gemm = _evaluate(args, model, qg, images, labels)
    fields, correct = evaluation_summary(ev, reference)
    trace = ev.trace
    wall = time.perf_counter() - t_start
    from simulator.provenance import tool_info

    summary = {
        "tool": tool_info(),
        "model": model_name, "checkpoint": args.checkpoint, "data": args.data or default_data(args.model), "engine": engine,
        "model_config": _model_config(model, args),
        "images": int(ev.n_images), "recipe": cfg.__dict__ | {"label": cfg.label},
        "calib_images_used": int(len(calib)),
        **fields, **significance_record(correct),
        **({"planted_outliers": planted.to_dict()} if planted is not None else {}),
        "cluster": cluster, "gemm_backend": gemm, "threads": threads,
        "wall_time_s": wall, "since_process_start_s": _since_process_start(), "calibration_s": t_calib,
    }
    print_summary(summary, cfg.label)
    if plan.npus:
        import hwmodels
        from hwmodels.report import format_comparison, format_report

        reports = [hwmodels.estimate(trace, npu) for npu in plan.npus]
        print(format_report(reports[0]) if len(reports) == 1 else format_comparison(reports))
        summary["hardware"] = [r.to_dict() | {"accelerator": accelerator_record(npu)}
                               for r, npu in zip(reports, plan.npus)]
    if args.layers:
        from simulator.layer_report import run_layers
        summary["layers"] = run_layers(args, cfg, images, qg, plan.npus)
    _write_outputs(args, qg, summary)
    return 0


def _evaluate(args, model, qg, images, labels):
    """(merged `simulator.evaluation.Shard`, ``reference`` record, ``cluster`` record or None, the
    simulator's GEMM backend report or None on a cluster): fp32, the fake-quant reference
    (``--reference``) and the simulator, here or on ``--cluster``."""
    from reference.data import dataset_size
    from simulator import progress
    from simulator.evaluation import evaluate_images, reference_positions, reference_record

    n = len(images) if images is not None else dataset_size(args.data or default_data(args.model), "test", args.images)
    positions = reference_positions(n, args.reference, args.reference_images)
    record = reference_record(args.reference, args.reference_images, n, positions)
    if args.cluster is not None:
        from simulator.dask_evaluation import evaluate_on_cluster

        ev, cluster = evaluate_on_cluster(args.cluster, model, qg, data=args.data or default_data(args.model), limit=args.images,
                                          max_pixels=_max_pixels(args), n_images=n, checked=positions,
                                          batch_size=args.batch_size, backend=args.backend)
        return ev, record, cluster, None
    from simulator.engines import graph_executors

    ref = {"full": "fake-quant x2", "none": "no fake-quant"}.get(args.reference) or (
        "fake-quant x2" if len(positions) == n else f"fake-quant x2 on {len(positions)} sampled")
    desc = f"evaluating {n} images (fp32, {ref}, integer simulator; the first batch compiles)"
    executors = graph_executors(qg, args.backend)
    ev = evaluate_images(model, executors, images, labels, 0, positions, args.batch_size,
                         track=lambda it: progress.track(it, desc, unit="batch"))
    return ev, record, None, executors[2].gemm_report()


_PROCESS_T0 = time.time()   # fallback start of this process: when the CLI module was imported


def _since_process_start() -> float:
    """Seconds since this process started (interpreter start-up and every import included): the
    process's create time from psutil (a dependency of dask distributed), else since this module's import."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # noqa: BLE001 -- no psutil or no /proc: the import-time stamp
        return time.time() - _PROCESS_T0


def _write_outputs(args, qg, summary: dict) -> None:
    """--save-qvit, --json and --csv together: every file renamed into place, or none."""
    from simulator.atomic_files import Batch, dumps_json
    from simulator.summary import summary_csv

    with Batch() as batch:
        if args.save_qvit:
            batch.add(args.save_qvit, qg.npz_writer(), f"--save-qvit {args.save_qvit}")
        if args.json:
            batch.add(args.json, dumps_json(summary, f"--json {args.json}", default=_json_default),
                      f"--json {args.json}")
        if args.csv:
            batch.add(args.csv, summary_csv(summary).encode(), f"--csv {args.csv}")


def _model_config(model, args) -> dict:
    from reference.models import model_input_config

    cfg = model_input_config(model)
    return {"num_classes": int(model.num_classes), **{k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in cfg.items()}}


def _write_text_atomic(path: str, text: str, flag: str) -> None:
    """Write text atomically with the user's umask (`simulator.atomic_files`); errors name ``flag``."""
    from simulator.atomic_files import write_bytes

    write_bytes(path, text.encode(), f"{flag} {path}")


def _subcommand(name: str):
    import importlib

    module, func = SUBCOMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), func)


def _logging_flags(argv: list[str]) -> tuple[bool, bool, bool]:
    """(quiet, verbose, progress) from argv, for subcommands that parse their own flags."""
    return ("-q" in argv or "--quiet" in argv, "-v" in argv or "--verbose" in argv, "--no-progress" not in argv)


def main(argv: list[str] | None = None) -> int:
    """The ``simulate`` command; ``argv`` None (the console script) reads ``sys.argv`` and, as the process
    is about to exit, freezes the garbage collector (`gc.freeze`): the interpreter's final collections
    over torch's, timm's and numba's object graphs took ~2 s of every run's exit, and there is nothing
    left for them to free. Exit handlers and finalizers still run."""
    code = _dispatch(sys.argv[1:] if argv is None else argv)
    if argv is None:
        import gc

        gc.freeze()
    return code


def _dispatch(argv: list[str]) -> int:
    try:
        if argv and argv[0] in SUBCOMMANDS:
            configure_logging(*_logging_flags(argv[1:]))
            return _subcommand(argv[0])(argv[1:])
        if any(a == "--onnx-qdq" or a.startswith("--onnx-qdq=") for a in argv):   # docs/onnx.md: import
            import importlib
            configure_logging(*_logging_flags(argv))
            return importlib.import_module("simulator.onnx_command").onnx_qdq_main(argv)
        args = build_parser().parse_args(argv)
        configure_logging(args.quiet, args.verbose, not args.no_progress)
        return run_main(args)
    except InputError as e:
        print(f"simulate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
