"""Recipe ``params:`` schemas: one frozen dataclass and one checker per recipe.

Torch-free on purpose: `reference.recipes.config.recipe_from_dict` checks the
params of every recipe it validates (a CLI recipe, every point a sweep
expands) before anything heavy is imported or computed. Each recipe module
re-exports its own ``XxxParams`` / ``parse_params`` from here.

``SWEEP_DEFAULT_PARAMS`` gives the params a recipe gets when a sweep names it
without any (``recipe: "*"``): the recipes whose YAML requires a choice (igq:
fixed G or a BOP budget) get the cheap, documented one.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from simulator.errors import InputError
from simulator.scale_predictor import MAX_DEGREE

__all__ = ["StaticParams", "SoftmaxOption", "parse_static", "GROUP_CHOICES", "IgqParams", "APQParams", "ScalePredictorParams", "TsptqParams", "ExitsParams",
           "parse_igq", "parse_apq", "parse_scalepredictor", "parse_tsptq", "parse_exits", "CHECKS",
           "SWEEP_DEFAULT_PARAMS", "MECHANISM_PARSERS", "parse_mechanisms"]

GROUP_CHOICES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class IgqParams:
    groups: int | None = None
    bop_budget: float | None = None
    candidates: tuple = GROUP_CHOICES
    max_exp: int = 15
    allocation_images: int = 64
    sensitivity: str = "linearized"     # linearized (one float pass, reference.perturbation_kl) | measured


IGQ_SENSITIVITIES = ("linearized", "measured")


def parse_igq(params: dict, where: str = "recipe") -> IgqParams:
    """Validate igq ``params`` into `IgqParams` (exactly one of groups / bop_budget)."""
    where = f"{where}: params"
    p = dict(params)
    known = [f.name for f in dataclasses.fields(IgqParams)]
    for key in p:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise InputError(f"{where}.{key}: unknown field" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    if ("groups" in p) == ("bop_budget" in p):
        raise InputError(f"{where}: give exactly one of groups (fixed G) or bop_budget (allocated G)")

    def int_in(key, lo, hi):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise InputError(f"{where}.{key}: expected an integer in [{lo}, {hi}], got {v!r}")
        return v
    out = {}
    if "groups" in p and p["groups"] not in GROUP_CHOICES or isinstance(p.get("groups"), bool):
        raise InputError(f"{where}.groups: expected one of {list(GROUP_CHOICES)}, got {p['groups']!r}")
    if "groups" in p:
        out["groups"] = p["groups"]
    if "bop_budget" in p:
        v = p["bop_budget"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise InputError(f"{where}.bop_budget: expected a positive number (x static BOPs), got {v!r}")
        out["bop_budget"] = float(v)
    if "candidates" in p:
        c = p["candidates"]
        if (not isinstance(c, list) or not c or any(isinstance(v, bool) or v not in GROUP_CHOICES for v in c)):
            raise InputError(f"{where}.candidates: expected a non-empty list from {list(GROUP_CHOICES)}, got {c!r}")
        out["candidates"] = tuple(sorted(set(c)))
    if "max_exp" in p:
        out["max_exp"] = int_in("max_exp", 1, 24)
    if "allocation_images" in p:
        out["allocation_images"] = int_in("allocation_images", 1, 100000)
    if "sensitivity" in p:
        if p["sensitivity"] not in IGQ_SENSITIVITIES:
            raise InputError(f"{where}.sensitivity: expected one of {list(IGQ_SENSITIVITIES)}, "
                             f"got {p['sensitivity']!r}")
        out["sensitivity"] = p["sensitivity"]
    return IgqParams(**out)

@dataclass(frozen=True)
class APQParams:
    exit_heads: str = "auto"            # auto | distill | path to a heads .safetensors
    exits_every: int = 2                # distilled heads: after every N blocks
    threshold: object = "search"        # "search" or a fixed shared tau in (0, 1]
    allocation: str = "apq"             # apq | uniform (recipe w_bits/a_bits everywhere)
    bit_candidates: tuple = ((8, 8), (6, 6), (4, 8), (4, 4))
    bop_budgets: tuple = (1.0, 0.5, 0.35, 0.25)
    threshold_grid: tuple = (0.999, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
    risk_bound: float = 0.02
    confidence: float = 0.9
    holdout_fraction: float = 0.5
    seed: int = 0
    sensitivity: str = "linearized"     # linearized (block outputs, reference.perturbation_kl) | measured
    sensitivity_images: int = 256       # search images for the linearized sensitivities (first N of the split)


def _err(where, field, msg):
    return InputError(f"{where}: params.{field}: {msg}")


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_apq(d: dict, where: str = "recipe") -> APQParams:
    """Validate ``params`` of an apq recipe into `APQParams` (one-line errors)."""
    known = APQParams.__dataclass_fields__
    for k in d:
        if k not in known:
            raise _err(where, k, f"unknown apq parameter (expected one of {', '.join(known)})")
    v = {**{k: f.default for k, f in known.items()}, **d}
    if not isinstance(v["exit_heads"], str):
        raise _err(where, "exit_heads", "expected 'auto', 'distill' or a path")
    if v["allocation"] not in ("apq", "uniform"):
        raise _err(where, "allocation", f"expected 'apq' or 'uniform', got {v['allocation']!r}")
    if v["sensitivity"] not in ("linearized", "measured"):
        raise _err(where, "sensitivity", f"expected 'linearized' or 'measured', got {v['sensitivity']!r}")
    t = v["threshold"]
    if t != "search" and not (_num(t) and 0 < t <= 1):
        raise _err(where, "threshold", f"expected 'search' or a number in (0, 1], got {t!r}")
    for k, lo, hi in (("risk_bound", 0, 1), ("confidence", 0, 1), ("holdout_fraction", 0, 1)):
        if not (_num(v[k]) and lo < v[k] < hi):
            raise _err(where, k, f"expected a number in ({lo}, {hi}), got {v[k]!r}")
    for k in ("exits_every", "seed", "sensitivity_images"):
        if isinstance(v[k], bool) or not isinstance(v[k], int) or v[k] < (0 if k == "seed" else 1):
            raise _err(where, k, f"expected a {'non-negative' if k == 'seed' else 'positive'} integer")
    bc = v["bit_candidates"]
    if (not isinstance(bc, (list, tuple)) or not bc or
            any(not isinstance(p, (list, tuple)) or len(p) != 2 or
                any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8 for b in p) for p in bc)):
        raise _err(where, "bit_candidates", f"expected a list of [w_bits, a_bits] pairs in 2..8, got {bc!r}")
    for k, lo, hi in (("bop_budgets", 0, 1), ("threshold_grid", 0, 1)):
        s = v[k]
        if not isinstance(s, (list, tuple)) or not s or any(not (_num(x) and lo < x <= hi) for x in s):
            raise _err(where, k, f"expected a non-empty list of numbers in ({lo}, {hi}], got {s!r}")
    v["bit_candidates"] = tuple(tuple(p) for p in bc)
    v["bop_budgets"], v["threshold_grid"] = tuple(v["bop_budgets"]), tuple(sorted(v["threshold_grid"], reverse=True))
    return APQParams(**v)

@dataclass(frozen=True)
class ScalePredictorParams:
    degree: int = 2
    permille: int = 999


def parse_scalepredictor(params: dict, where: str = "recipe") -> ScalePredictorParams:
    """Validate ``params`` into `ScalePredictorParams`; one-line `InputError` per problem."""
    known = sorted(f.name for f in dataclasses.fields(ScalePredictorParams))
    for key in params:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise InputError(f"{where}: params.{key}: unknown parameter (expected one of {', '.join(known)})"
                             + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    out = {}
    for key, (lo, hi) in (("degree", (0, MAX_DEGREE)), ("permille", (500, 1000))):
        if key in params:
            v = params[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise InputError(f"{where}: params.{key}: expected an integer in [{lo}, {hi}], got {v!r}")
            out[key] = v
    return ScalePredictorParams(**out)

@dataclass(frozen=True)
class TsptqParams:
    """``params:`` of a tsptq recipe YAML (all optional)."""

    softmax: bool = True                  # V-2SF on post-softmax
    gelu: bool = True                     # V-2SF on post-GELU
    layernorm: bool = True                # O-2SF on norm1 / norm2 outputs
    max_ratio_shift: int = 8              # r in 1..max for V-2SF
    max_outlier_shift: int = 4            # r_o in 1..max for O-2SF
    outlier_thresholds: tuple = (16.0, 8.0, 4.0, 2.0)   # channel range / median range candidates
    objective: str = "output"             # V-2SF search error: "output" (next GEMM's) or "tensor"
    objective_images: int = 32            # calibration images whose tensors the "output" search uses


def parse_tsptq(d: dict, where: str = "recipe") -> TsptqParams:
    """Validate ``params`` into `TsptqParams`; `InputError` ``<where>: params.<field>: ...``."""
    known = {f.name: f for f in dataclasses.fields(TsptqParams)}
    out = {}
    for key, val in d.items():
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise InputError(f"{where}: params.{key}: unknown tsptq parameter, expected one of "
                             f"{', '.join(known)}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        if key in ("softmax", "gelu", "layernorm"):
            if not isinstance(val, bool):
                raise InputError(f"{where}: params.{key}: expected true or false, got {val!r}")
        elif key in ("max_ratio_shift", "max_outlier_shift"):
            if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= 12:
                raise InputError(f"{where}: params.{key}: expected an integer in [1, 12], got {val!r}")
        elif key == "objective":
            if val not in ("output", "tensor"):
                raise InputError(f"{where}: params.objective: expected output or tensor, got {val!r}")
        elif key == "objective_images":
            if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= 4096:
                raise InputError(f"{where}: params.objective_images: expected an integer in [1, 4096], got {val!r}")
        else:
            ok = isinstance(val, list) and val and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 1 for v in val)
            if not ok:
                raise InputError(f"{where}: params.{key}: expected a non-empty list of numbers > 1, got {val!r}")
            val = tuple(float(v) for v in val)
        out[key] = val
    return TsptqParams(**out)


@dataclass(frozen=True)
class ExitsParams:
    """``params`` of the ``exits`` mechanism: the early exits of the apq recipe (heads and their
    positions, `APQParams`' fields of the same names) with fixed confidence thresholds. The
    apq recipe's joint search of thresholds and per-block widths stays in that recipe."""

    exit_heads: str = "auto"            # auto | distill | path to a heads .safetensors (as apq)
    exits_every: int = 2                # distilled heads: after every N blocks (as apq)
    threshold: object = 0.9             # tau in (0, 1] for every exit, or a list (one per exit)
    seed: int = 0                       # distillation seed (as apq)


def parse_exits(d: dict, where: str = "recipe") -> ExitsParams:
    """Validate ``params`` of the ``exits`` mechanism into `ExitsParams` (one-line errors)."""
    known = [f.name for f in dataclasses.fields(ExitsParams)]
    for k in d:
        if k not in known:
            hint = difflib.get_close_matches(str(k), known, n=1)
            raise _err(where, k, f"unknown exits parameter (expected one of {', '.join(known)})"
                       + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    v = {**{f.name: f.default for f in dataclasses.fields(ExitsParams)}, **d}
    if not isinstance(v["exit_heads"], str):
        raise _err(where, "exit_heads", "expected 'auto', 'distill' or a path")
    t = v["threshold"]
    tau = lambda x: _num(x) and 0 < x <= 1          # noqa: E731
    if t == "search":
        raise _err(where, "threshold", "search is the apq recipe's (joint with per-block widths); "
                                       "the exits mechanism takes a number in (0, 1] or a list of them")
    if isinstance(t, list):
        if not t or not all(tau(x) for x in t):
            raise _err(where, "threshold", f"expected a non-empty list of numbers in (0, 1], got {t!r}")
        v["threshold"] = tuple(float(x) for x in t)
    elif tau(t):
        v["threshold"] = float(t)
    else:
        raise _err(where, "threshold", f"expected a number in (0, 1] or a list of them, got {t!r}")
    for k in ("exits_every", "seed"):
        if isinstance(v[k], bool) or not isinstance(v[k], int) or v[k] < (1 if k == "exits_every" else 0):
            raise _err(where, k, f"expected a {'positive' if k == 'exits_every' else 'non-negative'} integer")
    return ExitsParams(**v)


@dataclass(frozen=True)
class SoftmaxOption:
    """The static recipe's post-softmax quantizer (``params: {softmax: {...}}``).

    ``quantizer: uniform`` (default): unsigned a_bits codes, ``scale: fixed`` (default, ``2**-a_bits``,
    today's behaviour) or ``scale: calibrated`` (a power of two ``2**-f`` chosen on the calibration
    images by the recipe's ``act_calibration``). ``quantizer: log2``: FQ-ViT log2 codes of ``bits``
    (default ``min(a_bits, 4)``, at most 4; top code = zero), ``attn @ V`` as a shift-accumulate
    (`simulator.softmax_codes`); ``scale`` does not apply."""

    quantizer: str = "uniform"
    scale: str = "fixed"
    bits: int | None = None

    def log2_bits(self, a_bits: int) -> int:
        return self.bits if self.bits is not None else min(a_bits, 4)


@dataclass(frozen=True)
class StaticParams:
    """``params:`` of a static recipe YAML (all optional)."""

    softmax: SoftmaxOption = SoftmaxOption()


def _unknown(where, key, known, what):
    hint = difflib.get_close_matches(str(key), known, n=1)
    return InputError(f"{where}.{key}: unknown {what} (expected one of {', '.join(known)})"
                      + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def parse_static(d: dict, where: str = "recipe") -> StaticParams:
    """Validate static ``params`` into `StaticParams`; `InputError` ``<where>: params.<field>: ...``."""
    where = f"{where}: params"
    for key in d:
        if key not in ("softmax",):
            raise _unknown(where, key, ["softmax"], "static parameter")
    sm = d.get("softmax", {})
    if sm is None:
        sm = {}
    if not isinstance(sm, dict):
        raise InputError(f"{where}.softmax: expected a mapping like {{quantizer: log2}}, got {sm!r}")
    where = f"{where}.softmax"
    known = [f.name for f in dataclasses.fields(SoftmaxOption)]
    for key in sm:
        if key not in known:
            raise _unknown(where, key, known, "softmax option")
    for key, choices in (("quantizer", ("uniform", "log2")), ("scale", ("fixed", "calibrated"))):
        if key in sm and sm[key] not in choices:
            hint = difflib.get_close_matches(str(sm[key]), choices, n=1)
            raise InputError(f"{where}.{key}: expected one of {', '.join(choices)}, got {sm[key]!r}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    q = sm.get("quantizer", "uniform")
    if q == "log2" and "scale" in sm:
        raise InputError(f"{where}.scale: applies to quantizer uniform only (log2 codes are powers of two)")
    if "bits" in sm:
        b = sm["bits"]
        if q != "log2":
            raise InputError(f"{where}.bits: applies to quantizer log2 only (uniform codes use a_bits)")
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 4:
            raise InputError(f"{where}.bits: expected an integer in [2, 4] (log2 shifts up to 2**b - 2 "
                             f"keep attn @ V in int32), got {b!r}")
    return StaticParams(softmax=SoftmaxOption(**sm))


#: recipe name -> check(params, where) raising `InputError` "<where>: params.<field>: ..."
CHECKS = {"static": parse_static, "igq": parse_igq, "apq": parse_apq, "scalepredictor": parse_scalepredictor, "tsptq": parse_tsptq}

#: params of a recipe named without any in a sweep (``recipe: "*"``): igq with G = 2 on every
#: grouped boundary (the README table's row; an allocation under a BOP budget takes ~20 min);
#: apq with the recipe's own w_bits/a_bits on every block (exits + risk-controlled threshold),
#: so the sweep's bit-widths mean the same for apq as for the others.
SWEEP_DEFAULT_PARAMS = {"igq": {"groups": 2}, "apq": {"allocation": "uniform"}}


#: mechanism name -> params parser, in precedence order (see `reference.recipes.mechanisms`): the
#: torch-free half of the mechanism registry, so a recipe's ``mechanisms:`` is checked at load.
#: ``two_scaled`` takes tsptq's params, ``groups`` igq's, ``predicted`` scalepredictor's, ``exits``
#: `ExitsParams` (apq's exit fields with a fixed threshold).
MECHANISM_PARSERS = {"two_scaled": parse_tsptq, "groups": parse_igq, "predicted": parse_scalepredictor,
                     "exits": parse_exits}


def parse_mechanisms(items, where: str = "recipe") -> tuple:
    """``mechanisms:`` of a recipe -> ``((name, frozen params), ...)`` in precedence order.

    Each item is a registered name or a one-key mapping ``{name: {params}}``. An already parsed
    tuple (a `RecipeConfig`'s own ``mechanisms``, e.g. when ``--wbits`` rebuilds the config from
    its fields) is returned as it is once its names are checked."""
    if isinstance(items, tuple) and all(isinstance(x, tuple) and len(x) == 2 and x[0] in MECHANISM_PARSERS
                                        and not isinstance(x[1], (dict, list)) for x in items):
        return items
    if not isinstance(items, list):
        raise InputError(f"{where}: mechanisms: expected a list of mechanism names, got {type(items).__name__}")
    seen = {}
    for i, item in enumerate(items):
        if isinstance(item, dict) and len(item) == 1:
            (name, params), = item.items()
            params = {} if params is None else params
        elif isinstance(item, str):
            name, params = item, {}
        else:
            raise InputError(f"{where}: mechanisms[{i}]: expected a name or {{name: {{params}}}}, got {item!r}")
        if name not in MECHANISM_PARSERS:
            hint = difflib.get_close_matches(str(name), MECHANISM_PARSERS, n=1)
            raise InputError(f"{where}: mechanisms[{i}]: unknown mechanism {name!r}, expected one of "
                             f"{', '.join(MECHANISM_PARSERS)}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        if name in seen:
            raise InputError(f"{where}: mechanisms[{i}]: {name} is listed twice")
        if not isinstance(params, dict):
            raise InputError(f"{where}: mechanisms.{name}: expected a mapping of params, got {params!r}")
        seen[name] = MECHANISM_PARSERS[name](params, f"{where}: mechanisms.{name}")
    return tuple((n, seen[n]) for n in MECHANISM_PARSERS if n in seen)
