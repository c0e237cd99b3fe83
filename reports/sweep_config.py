"""Sweep YAML -> validated, frozen `SweepSpec` (the runner never sees dicts).

A sweep file (``configs/sweeps/*.yaml``)::

    name: quick                       # optional; default: the file's stem
    batch_size: 64                    # optional; executor batch size
    models:
      - name: vit_digits              # timm ViT name, or the bundled default
        checkpoint: null              # optional .pth/.safetensors
        data: digits                  # 'digits' or an ImageFolder directory
        calib: digits                 # optional; default: data
        images: 150                   # optional; default: every image
    recipes:                          # each entry expands to a grid of points
      - recipe: static                # any name the recipe registry knows; "*" = every
                                      # registered recipe (new recipes join by name),
                                      # each with its sweep-default params
        bits: [w8a8, w6a6, w4a4]      # optional (w_bits, a_bits) pairs
        grid:                         # optional Cartesian product
          act_calibration: [mse, percentile]
          params.groups: [4, 8]       # recipe-specific params.<name>
        calib_images: 128             # any other RecipeConfig field: fixed
        base: ../recipes/x.yaml       # optional recipe YAML the entry starts from
    accelerators: [npu_int8, mcu_int8]   # names under configs/, or YAML paths
    report:
      breakdown: [static_w8a8]        # optional: points for the per-layer figures

Paths are relative to the sweep file's directory; a bare accelerator name
(no ``.yaml``) means ``configs/<name>.yaml`` of this project. Every problem
is one `InputError` line, ``<file>: <field path>: <what was expected>``.
Everything is checked here, before any point runs and without torch: every
expanded recipe point, params included (`reference.recipes.config`,
`reference.recipes.params`; ``"*"`` gives each recipe its
``SWEEP_DEFAULT_PARAMS``), and every accelerator YAML with its identity (the
same content twice is one accelerator, one ``name:`` with two contents is an
error naming both files: `hwmodels.load_distinct`).
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path


from simulator.bundled_models import BUILTIN_DATASETS, default_data
from simulator.errors import InputError

__all__ = ["ModelSpec", "RunSpec", "SweepSpec", "load_sweep", "parse_sweep", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_TOP_KEYS = ("name", "batch_size", "models", "recipes", "accelerators", "report")
_MODEL_KEYS = ("name", "checkpoint", "data", "calib", "images")
_RECIPE_META_KEYS = ("bits", "grid", "base")
_BITS_RE = re.compile(r"^w(\d+)a(\d+)$")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    checkpoint: str | None = None
    data: str = "digits"
    calib: str | None = None
    images: int | None = None

    @property
    def calib_data(self) -> str:
        return self.calib if self.calib is not None else self.data


@dataclass(frozen=True)
class RunSpec:
    """One model x one recipe configuration: what a worker calibrates and runs."""

    label: str
    model: ModelSpec
    recipe: dict          # a validated RecipeConfig as plain fields (picklable, JSON-ready)
    batch_size: int = 64


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source: str
    runs: tuple[RunSpec, ...]
    accelerators: tuple[str, ...]     # resolved YAML paths
    breakdown: tuple[str, ...] = ()   # run labels chosen for the per-layer figures


def _fail(where: str, msg: str):
    raise InputError(f"{where}: {msg}")


def _unknown(where: str, key, known) -> None:
    hint = difflib.get_close_matches(str(key), list(known), n=1)
    _fail(f"{where}: {key}", "unknown field" + (f" (did you mean {hint[0]!r}?)" if hint else "")
          + f"; expected one of {', '.join(known)}")


def _mapping(value, where: str, known) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if key not in known:
            _unknown(where, key, known)
    return value


def _list(value, where: str, what: str) -> list:
    if not isinstance(value, list) or not value:
        _fail(where, f"expected a non-empty list of {what}, got {value!r}")
    return value


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        _fail(where, f"expected a positive integer, got {value!r}")
    return value


def _path(value, where: str, base: Path, must: str = "file") -> str:
    if not isinstance(value, str) or not value:
        _fail(where, f"expected a path string, got {value!r}")
    path = Path(value) if Path(value).is_absolute() else base / value
    ok = path.is_file() if must == "file" else path.is_dir()
    if not ok:
        _fail(where, f"{value}: no such {'file' if must == 'file' else 'directory'} (relative to {base})")
    return str(path)


def _model(entry, where: str, base: Path) -> ModelSpec:
    entry = _mapping(entry, where, _MODEL_KEYS)
    if not isinstance(entry.get("name"), str) or not entry["name"]:
        _fail(f"{where}: name", f"expected a model name (timm ViT, vit_digits or vit_clutter), got {entry.get('name')!r}")
    ckpt = entry.get("checkpoint")
    ckpt = None if ckpt is None else _path(ckpt, f"{where}: checkpoint", base)
    data = {}
    for key in ("data", "calib"):
        val = entry.get(key, default_data(entry["name"]) if key == "data" else None)
        if val is not None and val not in BUILTIN_DATASETS:
            val = _path(val, f"{where}: {key}", base, must="dir")
        data[key] = val
    images = entry.get("images")
    images = None if images is None else _positive_int(images, f"{where}: images")
    return ModelSpec(entry["name"], ckpt, data["data"], data["calib"], images)


def _bits_pairs(value, where: str) -> list[dict]:
    pairs = []
    for j, item in enumerate(_list(value, where, "'wXaY' strings")):
        m = _BITS_RE.match(str(item).lower())
        if not m:
            _fail(f"{where}[{j}]", f"expected 'w<bits>a<bits>' such as w8a8, got {item!r}")
        pairs.append({"w_bits": int(m.group(1)), "a_bits": int(m.group(2))})
    return pairs


def _grid(value, where: str) -> list[dict]:
    """Cartesian product of ``field: [values]`` (``params.x`` keys go into params)."""
    if not isinstance(value, dict) or not value:
        _fail(where, f"expected a mapping of field -> list of values, got {value!r}")
    axes = []
    for key, vals in value.items():
        if not isinstance(key, str) or key in ("recipe", "params", "bits", "grid", "base"):
            _fail(f"{where}: {key}", "cannot be a grid axis (use params.<name> or a recipe field)")
        axes.append([(key, v) for v in _list(vals, f"{where}: {key}", "values")])
    return [dict(combo) for combo in itertools.product(*axes)]


_SHORT = {"act_calibration": "act", "weight_calibration": "wcal", "percentile": "pct", "calib_images": "calib",
          "residual_bits": "res", "edge_bits": "edge"}


def _point_label(cfg) -> str:
    """``<recipe>_w<W>a<A>`` plus every field that differs from the recipe defaults, abbreviated."""
    default = type(cfg)()
    extra = [f"{_SHORT.get(k, k)}={v}" for k, v in cfg.__dict__.items()
             if k not in ("recipe", "w_bits", "a_bits", "params") and v != getattr(default, k)]
    extra += [f"{k}={v}" for k, v in sorted(cfg.params.items())
              if not (cfg.recipe == "apq" and k == "allocation")]   # the apq label says it
    return cfg.label + (" " + ",".join(extra) if extra else "")


def _recipe_points(entry, where: str, base: Path) -> list[tuple[str, dict]]:
    from reference.recipes.config import RECIPE_NAMES, load_recipe, recipe_from_dict
    from reference.recipes.params import SWEEP_DEFAULT_PARAMS

    if not isinstance(entry, dict):
        _fail(where, f"expected a mapping with at least 'recipe', got {type(entry).__name__}")
    if entry.get("recipe") == "*":       # every registered recipe, with its sweep-default params
        return [p for name in RECIPE_NAMES for p in _recipe_points(
            {"params": SWEEP_DEFAULT_PARAMS.get(name, {}), **entry, "recipe": name}, f"{where} (recipe {name})", base)]
    fixed = {k: v for k, v in entry.items() if k not in _RECIPE_META_KEYS}
    if "base" in entry:
        fixed = {**load_recipe(_path(entry["base"], f"{where}: base", base)).__dict__, **fixed}
    bits = _bits_pairs(entry["bits"], f"{where}: bits") if "bits" in entry else [{}]
    grid = _grid(entry["grid"], f"{where}: grid") if "grid" in entry else [{}]
    points = []
    for pair, combo in itertools.product(bits, grid):
        fields = {**fixed, "params": dict(fixed.get("params") or {}), **pair}
        for key, val in combo.items():
            if key.startswith("params."):
                fields["params"][key[len("params."):]] = val
            else:
                fields[key] = val
        cfg = recipe_from_dict(fields, where=where)
        points.append((_point_label(cfg), dict(cfg.__dict__)))
    return points


def _accelerator(value, where: str, base: Path) -> str:
    from hwmodels.load import resolve_path

    if not isinstance(value, str) or not value:
        _fail(where, f"expected an accelerator name or YAML path, got {value!r}")
    try:
        path = resolve_path(value, base)
    except InputError as e:
        _fail(where, str(e))
    if not Path(path).is_file():
        _fail(where, f"{value}: no such file (relative to {base})")
    return path


def _distinct_accelerators(paths: list[str], where: str) -> tuple[str, ...]:
    """Validate every accelerator YAML now, and keep one file per accelerator: the same content
    twice is one accelerator; one ``name:`` with two different contents is an error."""
    import hwmodels

    try:
        return tuple(npu.source for npu in hwmodels.load_distinct(paths))
    except InputError as e:
        _fail(where, str(e))


def parse_sweep(data, source: str, base: Path | None = None) -> SweepSpec:
    """Validate a parsed sweep mapping; errors name ``source: field path``."""
    base = Path(source).resolve().parent if base is None else base
    data = _mapping(data, source, _TOP_KEYS)
    for key in ("models", "recipes", "accelerators"):
        if key not in data:
            _fail(f"{source}: {key}", "missing (required)")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        _fail(f"{source}: name", f"expected a word (letters, digits, _ . -), got {name!r}")
    batch = _positive_int(data.get("batch_size", 64), f"{source}: batch_size")
    models = [_model(m, f"{source}: models[{i}]", base)
              for i, m in enumerate(_list(data["models"], f"{source}: models", "models"))]
    recipes = [p for i, r in enumerate(_list(data["recipes"], f"{source}: recipes", "recipe entries"))
               for p in _recipe_points(r, f"{source}: recipes[{i}]", base)]
    accels = [_accelerator(a, f"{source}: accelerators[{i}]", base)
              for i, a in enumerate(_list(data["accelerators"], f"{source}: accelerators", "accelerators"))]
    runs, seen = [], {}
    for model in models:
        for label, recipe in recipes:
            full = label if len(models) == 1 else f"{model.name}/{label}"
            key = json.dumps([model.__dict__, recipe], sort_keys=True)
            if full in seen or key in seen.values():
                _fail(f"{source}: recipes", f"duplicate point {full!r} (two entries expand to the same config)")
            seen[full] = key
            runs.append(RunSpec(full, model, recipe, batch))
    breakdown = _breakdown(data.get("report", {}), f"{source}: report", [r.label for r in runs])
    return SweepSpec(name, source, tuple(runs), _distinct_accelerators(accels, f"{source}: accelerators"), breakdown)


def _breakdown(report, where: str, labels: list[str]) -> tuple[str, ...]:
    report = _mapping(report, where, ("breakdown",))
    chosen = report.get("breakdown", [])
    for j, label in enumerate(chosen if isinstance(chosen, list) else [chosen]):
        if label not in labels:
            hint = difflib.get_close_matches(str(label), labels, n=1)
            _fail(f"{where}: breakdown[{j}]", f"unknown point {label!r}"
                  + (f" (did you mean {hint[0]!r}?)" if hint else f"; points: {', '.join(labels)}"))
    return tuple(chosen if isinstance(chosen, list) else [chosen])


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep YAML file."""
    path = os.fspath(path)
    from reference.recipes.config import read_yaml

    return parse_sweep(read_yaml(path, "sweep"), path)
