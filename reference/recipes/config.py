"""Recipe YAML -> validated, frozen `RecipeConfig` (the core never sees dicts).

A recipe file (``configs/recipes/*.yaml``)::

    recipe: static            # which recipe module builds the model
    w_bits: 8                 # GEMM weight codes (per output channel)
    a_bits: 8                 # GEMM activation codes (per tensor)
    residual_bits: 16         # the residual stream between blocks
    edge_bits: 8              # patch-embed and head operands (0: same as w/a)
    weight_calibration: mse   # minmax | mse
    act_calibration: mse      # minmax | percentile | mse
    percentile: 99.99
    calib_images: 128
    mechanisms:               # static + composed mechanisms (recipe: static only), applied in
      - two_scaled: {}        # precedence order (reference.recipes.mechanisms); params as tsptq's
      - groups: {groups: 2}   # ... and igq's

Every problem is reported as ``<file>: <field>: <what was expected>``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields, replace

import yaml

from reference.recipes import params as _params
from simulator.errors import InputError
from simulator.safe_yaml import StrictLoader, read_capped

__all__ = ["RecipeConfig", "load_recipe", "recipe_from_dict", "RECIPE_NAMES", "PARAM_CHECKS"]

RECIPE_NAMES = ("static", "tsptq", "igq", "scalepredictor", "apq")
# recipe name -> check(params: dict, where: str) raising InputError("<where>: params.<field>: ...");
# torch-free (reference.recipes.params), so a recipe is checked whole before any heavy import.
PARAM_CHECKS: dict = dict(_params.CHECKS)


@dataclass(frozen=True)
class RecipeConfig:
    recipe: str = "static"
    w_bits: int = 8
    a_bits: int = 8
    residual_bits: int = 16
    edge_bits: int = 8
    weight_calibration: str = "mse"
    act_calibration: str = "mse"
    percentile: float = 99.99
    calib_images: int = 128
    params: dict = field(default_factory=dict)
    mechanisms: tuple = ()      # ((name, frozen params), ...) in precedence order

    @property
    def label(self) -> str:
        """``<recipe>_w<W>a<A>``; apq says what its bits mean: ``apq_mixed`` when the search
        chooses per-block widths (w_bits/a_bits unused), ``apq_exits_w<W>a<A>`` when uniform."""
        if self.recipe == "apq":
            if self.params.get("allocation", "apq") == "apq":
                return "apq_mixed"
            return f"apq_exits_w{self.w_bits}a{self.a_bits}"
        if self.mechanisms:
            return "+".join(n for n, _ in self.mechanisms) + f"_w{self.w_bits}a{self.a_bits}"
        sm = self.params.get("softmax") if self.recipe == "static" and isinstance(self.params, dict) else None
        if isinstance(sm, dict) and (sm.get("quantizer", "uniform"), sm.get("scale", "fixed")) != ("uniform", "fixed"):
            kind = "log2" if sm.get("quantizer") == "log2" else "calibrated"     # the post-softmax option
            return f"static_softmax_{kind}_w{self.w_bits}a{self.a_bits}"
        return f"{self.recipe}_w{self.w_bits}a{self.a_bits}"

    def with_bits(self, w_bits: int | None = None, a_bits: int | None = None) -> "RecipeConfig":
        return replace(self, w_bits=w_bits or self.w_bits, a_bits=a_bits or self.a_bits)


_CHOICES = {
    "weight_calibration": ("minmax", "mse"),
    "act_calibration": ("minmax", "percentile", "mse"),
}
_RANGES = {
    "w_bits": (2, 8), "a_bits": (2, 8), "residual_bits": (8, 24), "edge_bits": (0, 8),
    "percentile": (50.0, 100.0), "calib_images": (1, 100000),
}


def recipe_from_dict(d, where: str = "recipe") -> RecipeConfig:
    """Validate a mapping into a `RecipeConfig`; `InputError` names ``where: field``."""
    if not isinstance(d, dict):
        raise InputError(f"{where}: expected a mapping of recipe fields, got {type(d).__name__}")
    known = {f.name: f for f in fields(RecipeConfig)}
    for key in d:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            shown = key if isinstance(key, str) and key.isprintable() else repr(key)   # one line, always
            raise InputError(f"{where}: {shown}: unknown field" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    if "recipe" not in d:
        raise InputError(f"{where}: recipe: missing (one of {', '.join(RECIPE_NAMES)})")
    values = {}
    for key, val in d.items():
        default = known[key].default if key != "params" else {}
        if key == "mechanisms":
            val = _params.parse_mechanisms(val, where)
        elif key == "recipe":
            if val not in RECIPE_NAMES:
                hint = difflib.get_close_matches(str(val), RECIPE_NAMES, n=1)
                raise InputError(f"{where}: recipe: unknown recipe {val!r}, expected one of "
                                 f"{', '.join(RECIPE_NAMES)}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        elif key == "params":
            if not isinstance(val, dict):
                raise InputError(f"{where}: params: expected a mapping, got {type(val).__name__}")
        elif isinstance(default, bool) or isinstance(default, int):
            if isinstance(val, bool) or not isinstance(val, int):
                raise InputError(f"{where}: {key}: expected an integer, got {val!r}")
        elif isinstance(default, float):
            if isinstance(val, bool) or not isinstance(val, (int, float)):
                raise InputError(f"{where}: {key}: expected a number, got {val!r}")
            val = float(val)
        elif isinstance(default, str):
            if val not in _CHOICES[key]:
                raise InputError(f"{where}: {key}: expected one of {', '.join(_CHOICES[key])}, got {val!r}")
        if key in _RANGES:
            lo, hi = _RANGES[key]
            if not lo <= val <= hi:
                raise InputError(f"{where}: {key}: expected a value in [{lo}, {hi}], got {val!r}")
        values[key] = val
    cfg = RecipeConfig(**values)
    if cfg.mechanisms and cfg.recipe != "static":
        raise InputError(f"{where}: mechanisms: compose on recipe static, got recipe {cfg.recipe!r} "
                         "(tsptq is static + [two_scaled], igq is static + [groups])")
    if cfg.mechanisms and cfg.params:
        raise InputError(f"{where}: params: a recipe with mechanisms takes its params per mechanism")
    if cfg.recipe in PARAM_CHECKS:
        PARAM_CHECKS[cfg.recipe](cfg.params, where)
    return cfg


def read_yaml(path: str, what: str):
    """Parse a YAML file; missing, unreadable or malformed files are one-line
    `InputError`s naming the file (``what``: "recipe", "sweep", ...)."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(read_capped(f, path), Loader=StrictLoader)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e.__class__.__name__})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None)
        raise InputError(f"{path}: invalid YAML{at}" + (f": {problem}" if problem else "")) from None


def load_recipe(path: str | os.PathLike) -> RecipeConfig:
    """Read and validate a recipe YAML file."""
    path = os.fspath(path)
    data = read_yaml(path, "recipe")
    return recipe_from_dict(data, where=path)
