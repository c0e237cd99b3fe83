"""Planted outliers: function-preserving channel scalings after LayerNorm (stress variants).

ImageNet-trained ViTs have a few channels whose post-LayerNorm range is one to two
orders of magnitude wider than the median channel's; small models trained here do not.
`plant_outliers` reproduces that statistic on any loaded timm VisionTransformer
without changing its float function, so a recipe's handling of it can be measured:

    y = LN(x) = gamma * x_hat + beta,   z = W y + b
    gamma'_c = alpha_c * gamma_c,  beta'_c = alpha_c * beta_c,  W'[:, c] = W[:, c] / alpha_c
    => y'_c = alpha_c * y_c  and  W' y' + b = W y + b   (exactly, up to float rounding)

This is RepQ-ViT's scale reparameterisation (Li et al., ICCV 2023, Sec. 4.2) run
backwards: RepQ-ViT folds per-channel quantizer scales *out* of the post-LayerNorm
activations into the LayerNorm affine and the next linear; we fold chosen factors *in*.
Channel ranges of the planted channels grow by alpha_c (alpha_c > 0, so max/min keep
their order; pooling by token, mean or max commutes with the scaling).

Sites (``layers``): ``norm1`` (-> ``attn.qkv``), ``norm2`` (-> ``mlp.fc1``), and
``final`` (``norm`` or ``fc_norm`` -> ``head`` and ``head_dist``). ParallelScalingBlock's
``in_norm`` (-> ``in_proj``, fused qkv + fc1) counts as both norm1 and norm2;
ParallelThingsBlock's branch norms as norm1 / norm2. A norm whose output is not read
only by linears (ResPostBlock's norms sit after the residual add; a final norm
followed by another norm or by nothing, ``num_classes=0``; attention pooling) is
skipped and reported with the reason: nothing is ever changed that would change the
function. The model is modified **in place** (``copy.deepcopy`` it first to keep the
original); the returned `PlantReport` lists what was planted and what was skipped.

Where the default ranges come from: docs/recipes/outliers.md.
"""

from __future__ import annotations

import difflib
import os
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch

from simulator.errors import InputError

__all__ = ["OutlierSpec", "PlantedNorm", "PlantReport", "plant_outliers", "parse_outlier_spec", "LAYERS"]

LAYERS = ("norm1", "norm2", "final")


@dataclass(frozen=True)
class OutlierSpec:
    """Which channels to scale and by how much.

    ``fraction`` of each chosen LayerNorm's channels (at least one when > 0) are drawn
    without replacement; each gets alpha log-uniform in ``alpha_range`` (lo == hi: all
    alpha equal). Draws are seeded by (``seed``, the norm's module name), so a norm's
    choice does not depend on which other norms are planted.
    Defaults: 5% of channels, alpha in [10, 40] (FQ-ViT: channel ranges up to ~40x the
    median; see docs/recipes/outliers.md).
    """
    fraction: float = 0.05
    alpha_range: tuple[float, float] = (10.0, 40.0)
    seed: int = 0
    layers: tuple[str, ...] = LAYERS

    def __post_init__(self):
        if not isinstance(self.fraction, (int, float)) or isinstance(self.fraction, bool) \
                or not 0.0 <= self.fraction <= 1.0:
            raise InputError(f"fraction: expected a number in [0, 1], got {self.fraction!r}")
        lo_hi = self.alpha_range
        if (not isinstance(lo_hi, tuple) or len(lo_hi) != 2
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in lo_hi)
                or not 0 < lo_hi[0] <= lo_hi[1] < float("inf")):
            raise InputError(f"alpha_range: expected [lo, hi] with 0 < lo <= hi, got {lo_hi!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise InputError(f"seed: expected a non-negative int, got {self.seed!r}")
        if not isinstance(self.layers, tuple) or not self.layers:
            raise InputError(f"layers: expected a non-empty list of {', '.join(LAYERS)}, got {self.layers!r}")
        for name in self.layers:
            if name not in LAYERS:
                hint = difflib.get_close_matches(str(name), LAYERS, n=1)
                raise InputError(f"layers: unknown layer {name!r}, expected one of {', '.join(LAYERS)}"
                                 + (f" (did you mean {hint[0]!r}?)" if hint else ""))

    def draw(self, name: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(sorted channel indices, their alphas) for the norm called ``name``."""
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        k = 0 if self.fraction == 0 else min(channels, max(1, round(self.fraction * channels)))
        idx = np.sort(rng.choice(channels, size=k, replace=False))
        lo, hi = np.log(self.alpha_range[0]), np.log(self.alpha_range[1])
        return idx, np.exp(rng.uniform(lo, hi, size=k)) if hi > lo else np.full(k, self.alpha_range[0])


@dataclass(frozen=True)
class PlantedNorm:
    norm: str                      # module name, e.g. "blocks.3.norm1"
    layer: str                     # "norm1" | "norm2" | "final" | "norm1+norm2" (ParallelScalingBlock)
    linears: tuple[str, ...]       # the linears whose input columns were divided
    channels: tuple[int, ...]
    alphas: tuple[float, ...]


@dataclass(frozen=True)
class PlantReport:
    spec: OutlierSpec
    planted: tuple[PlantedNorm, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()     # (module name, reason)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        n = sum(len(p.channels) for p in self.planted)
        lines = [f"planted outliers: {n} channels in {len(self.planted)} norms "
                 f"(fraction {self.spec.fraction}, alpha {self.spec.alpha_range[0]:g}..{self.spec.alpha_range[1]:g}, "
                 f"seed {self.spec.seed})"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


# --- finding the sites ---------------------------------------------------------------------------

def _is_linear(m) -> bool:
    return isinstance(m, torch.nn.Linear)


def _attention_input(attn, where: str):
    """The linears an attention module reads its input through, or a refusal reason."""
    from timm.models.vision_transformer import Attention
    if type(attn) is Attention and _is_linear(getattr(attn, "qkv", None)):
        return [(f"{where}.qkv", attn.qkv)]
    return f"{type(attn).__name__} is not known to read its input only through one qkv linear"


def _mlp_input(mlp, where: str):
    names = ("fc1_g", "fc1_x") if hasattr(mlp, "fc1_g") else ("fc1",)
    mods = [getattr(mlp, n, None) for n in names]
    if all(_is_linear(m) for m in mods):
        return [(f"{where}.{n}", m) for n, m in zip(names, mods)]
    return f"{type(mlp).__name__}: its input is not read by nn.Linear (fc1)"


def _block_sites(i: int, blk):
    """(norm name, layer, norm module, [(linear name, linear)] | reason) for one block."""
    import timm.models.vision_transformer as tv
    p = f"blocks.{i}"
    kind = type(blk)
    if kind is tv.Block:
        return [(f"{p}.norm1", "norm1", blk.norm1, _attention_input(blk.attn, f"{p}.attn")),
                (f"{p}.norm2", "norm2", blk.norm2, _mlp_input(blk.mlp, f"{p}.mlp"))]
    if kind is tv.ResPostBlock:
        why = "ResPostBlock: the norm is applied after the residual add, its output is the residual stream"
        return [(f"{p}.norm1", "norm1", blk.norm1, why), (f"{p}.norm2", "norm2", blk.norm2, why)]
    if kind is tv.ParallelScalingBlock:   # one norm feeds the fused qkv + fc1 projection
        return [(f"{p}.in_norm", "norm1+norm2", blk.in_norm, [(f"{p}.in_proj", blk.in_proj)])]
    if kind is tv.ParallelThingsBlock:
        out = [(f"{p}.attns.{j}.norm", "norm1", br.norm, _attention_input(br.attn, f"{p}.attns.{j}.attn"))
               for j, br in enumerate(blk.attns)]
        return out + [(f"{p}.ffns.{j}.norm", "norm2", br.norm, _mlp_input(br.mlp, f"{p}.ffns.{j}.mlp"))
                      for j, br in enumerate(blk.ffns)]
    return [(p, "norm1", None, f"block type {kind.__name__}: no reparameterisation rule")]


def _heads(model):
    heads = [("head", model.head)] + ([("head_dist", model.head_dist)] if hasattr(model, "head_dist") else [])
    if not all(_is_linear(h) for _, h in heads):
        return "its output is the model's output (no linear head, e.g. num_classes=0)"
    return heads


def _final_sites(model):
    if getattr(model, "attn_pool", None) is not None:
        return [("norm", "final", model.norm, "attention pooling (global_pool='map') reads the final norm")]
    fc_norm = getattr(model, "fc_norm", None)
    has_fc_norm = isinstance(fc_norm, torch.nn.LayerNorm)
    out = []
    if isinstance(model.norm, torch.nn.LayerNorm):
        why = "its output feeds fc_norm (a LayerNorm), not a linear" if has_fc_norm else _heads(model)
        out.append(("norm", "final", model.norm, why))
    if has_fc_norm:
        out.append(("fc_norm", "final", fc_norm, _heads(model)))
    return out


def _sites(model) -> list:
    from timm.models.vision_transformer import VisionTransformer
    if not isinstance(model, VisionTransformer):
        raise InputError(f"model: planting outliers needs a timm VisionTransformer, got {type(model).__name__}")
    out = [s for i, blk in enumerate(model.blocks) for s in _block_sites(i, blk)]
    if model.global_pool not in ("token", "avg", "max", "avgmax", ""):
        return out + [("norm", "final", model.norm, f"global_pool={model.global_pool!r}: pooling not known "
                       "to commute with a positive channel scaling")]
    return out + _final_sites(model)


# --- planting ------------------------------------------------------------------------------------

@torch.no_grad()
def _scale(norm, linears, idx: np.ndarray, alphas: np.ndarray) -> None:
    i = torch.as_tensor(idx, dtype=torch.long)
    a = torch.as_tensor(alphas, dtype=torch.float64)
    norm.weight[i] = (norm.weight[i].double() * a).to(norm.weight.dtype)
    if norm.bias is not None:
        norm.bias[i] = (norm.bias[i].double() * a).to(norm.bias.dtype)
    for lin in linears:
        lin.weight[:, i] = (lin.weight[:, i].double() / a).to(lin.weight.dtype)


def plant_outliers(model: torch.nn.Module, spec: OutlierSpec) -> PlantReport:
    """Scale ``spec``'s channels of every eligible LayerNorm in ``model`` (in place).

    Returns what was planted (norm, linears, channels, alphas) and what was skipped with
    why. The float function is unchanged up to float rounding (tests/reference/test_outliers.py).
    """
    planted, skipped = [], []
    for name, layer, norm, consumers in _sites(model):
        if not set(layer.split("+")) & set(spec.layers):
            continue
        if isinstance(consumers, str):
            skipped.append((name, consumers))
            continue
        if not isinstance(norm, torch.nn.LayerNorm) or norm.weight is None:
            skipped.append((name, f"{type(norm).__name__}: only a LayerNorm with an affine weight is rescaled"))
            continue
        idx, alphas = spec.draw(name, norm.weight.numel())
        _scale(norm, [lin for _, lin in consumers], idx, alphas)
        planted.append(PlantedNorm(name, layer, tuple(n for n, _ in consumers),
                                   tuple(int(c) for c in idx), tuple(float(a) for a in alphas)))
    return PlantReport(spec, tuple(planted), tuple(skipped))


# --- parsing -------------------------------------------------------------------------------------

_FIELDS = ("fraction", "alpha_range", "seed", "layers")


def spec_from_dict(raw, where: str) -> OutlierSpec:
    """Validate a mapping into an `OutlierSpec`; errors are one `InputError` line naming ``where``."""
    if raw is None:
        return OutlierSpec()
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a mapping of {', '.join(_FIELDS)}, got {type(raw).__name__}")
    for key in raw:
        if key not in _FIELDS:
            hint = difflib.get_close_matches(str(key), _FIELDS, n=1)
            raise InputError(f"{where}: unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                             + f", expected {', '.join(_FIELDS)}")
    kw = dict(raw)
    if "alpha_range" in kw:
        kw["alpha_range"] = tuple(kw["alpha_range"]) if isinstance(kw["alpha_range"], list) else kw["alpha_range"]
    if "layers" in kw:
        kw["layers"] = tuple(kw["layers"]) if isinstance(kw["layers"], list) else kw["layers"]
    try:
        return OutlierSpec(**kw)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def parse_outlier_spec(text: str, where: str = "--plant-outliers") -> OutlierSpec:
    """A spec from a YAML file path or an inline YAML mapping.

    ``"default"`` or ``""`` -> `OutlierSpec()`; ``"{fraction: 0.02, alpha_range: [20, 100], seed: 1}"``;
    or ``path/to/spec.yaml`` holding the same mapping.
    """
    import yaml

    from simulator.safe_yaml import StrictLoader, read_capped
    if text.strip() in ("", "default"):
        return OutlierSpec()
    if os.path.isfile(text):
        try:
            with open(text, encoding="utf-8") as f:
                body, where = read_capped(f, text), text
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{text}: cannot read ({e.__class__.__name__})") from None
    else:
        body = text
    try:
        raw = yaml.load(body, Loader=StrictLoader)
    except yaml.YAMLError as e:
        raise InputError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    return spec_from_dict(raw, where)
