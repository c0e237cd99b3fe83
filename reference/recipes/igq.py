"""`igq`: IGQ-ViT (Moon, Kim, Cheon, Ham, CVPR 2024) on top of the static recipe.

What we follow from the paper:

* Sec. 3.2: for every input instance the channels of each linear layer's
  input (here: norm1 -> qkv, attn_out -> proj, norm2 -> fc1, GELU -> fc2) are
  split into G groups of similar range, one quantizer per group, and the
  rows of each softmax attention map are grouped the same way. Patch embed
  and head keep the static quantizers (8-bit edge layers, one token at the
  head).
* Sec. 3.3: the number of groups per layer is chosen from a candidate set to
  minimise the discrepancy (KL divergence of the logits) between quantized
  and full-precision predictions under a BOP budget that counts the
  grouping overhead.

What is ours (hardware-minded; see `simulator.igq` and docs/recipes/igq.md):

* group scales are power-of-two fractions ``s_top * 2**-e`` of the static
  scale ``s_top`` (so groups differ by shifts only, G = 1 is the static
  recipe bit for bit); the exponents are chosen per layer and G on the
  calibration set by exhaustive search minimising the estimated absolute
  quantization noise ``sum_c min(4**-e(c), 4 * hi**2 * 4**-n_c)`` (a channel
  needing exponent n_c whose group exponent is e(c) <= n_c has noise ~ its
  group's scale squared, or its own power if it rounds to zero);
* the per-instance assignment is the finest non-clipping group, computed in
  integers from the wide intermediate before final quantization;
* allocation: per-layer sensitivities (that layer at G, every other layer at
  the smallest candidate) are assumed additive, then a greedy search raises
  the layer with the best KL decrease per extra BOP while the budget allows.

Recipe ``params`` (exactly one of ``groups`` / ``bop_budget``)::

    groups: 4              # fixed G for every grouped boundary, or
    bop_budget: 1.02       # total BOPs per image <= 1.02 x static (G = 1) BOPs
    candidates: [1, 2, 4, 8, 16]
    max_exp: 15            # finest group scale >= s_top * 2**-max_exp
    allocation_images: 64  # calibration images used for the KL allocation
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import torch

from reference.calibration import collect_boundaries
from reference.recipes import params as _params
from reference.recipes.config import RecipeConfig
from reference.recipes.igq_allocation import allocate, total_bops
from reference.recipes.static import _gamma, freeze_linear, freeze_static
from reference.vit_float import check_supported, float_boundaries, vit_arch
from simulator.errors import InputError
from simulator.igq import SITES, GroupQuantizer, IgqBlock
from simulator.int_nonlinear import SOFTMAX_RECIP_BITS
from simulator.qvit import QuantizedViT

__all__ = ["IgqParams", "parse_params", "build", "choose_exps", "with_groups", "total_bops"]

GROUP_CHOICES = _params.GROUP_CHOICES
IgqParams = _params.IgqParams
_CONSUMER = {"norm1": ("qkv", "attn.qkv"), "attn_out": ("proj", "attn.proj"),
             "norm2": ("fc1", "mlp.fc1"), "gelu": ("fc2", "mlp.fc2")}


def parse_params(cfg: RecipeConfig) -> IgqParams:
    """Validate ``cfg.params`` into `IgqParams` (see `reference.recipes.params`)."""
    return _params.parse_igq(cfg.params, f"recipe {cfg.label}")


# --- calibration of group exponents ----------------------------------------------------------
def choose_exps(amax: np.ndarray, scale: float, hi: int, groups: int, max_exp: int) -> np.ndarray:
    """Group exponents (finest first, last 0) for per-instance channel maxima ``amax``.

    ``n_c = floor(log2(scale * (hi + 0.5) / amax_c))`` clipped to [0, max_exp]
    is the finest exponent at which the channel does not clip; with the
    exponent set E, a channel lands in ``e(c) = max{e in E: e <= n_c}`` and
    costs ``min(4**-e(c), 4 * hi**2 * 4**-n_c)``; E minimises the total
    (exhaustively over subsets of 1..max_exp). Fewer than ``groups``
    exponents when max_exp + 1 < groups.
    """
    a = np.asarray(amax, dtype=np.float64).ravel()
    with np.errstate(divide="ignore"):
        n = np.floor(np.log2(scale * (hi + 0.5) / np.where(a > 0, a, np.inf)))
    n = np.clip(np.nan_to_num(n, posinf=max_exp), 0, max_exp).astype(np.int64)
    hist = np.bincount(n, minlength=max_exp + 1).astype(np.float64)
    k = min(groups, max_exp + 1) - 1
    if k == 0:
        return np.zeros(1, dtype=np.int64)
    levels = np.arange(max_exp + 1)
    own = 4.0 * hi * hi * 4.0 ** -levels.astype(np.float64)
    best, best_cost = None, np.inf
    for extra in itertools.combinations(range(1, max_exp + 1), k):
        e_sorted = np.array((0,) + extra)
        e_of = e_sorted[np.searchsorted(e_sorted, levels, side="right") - 1]
        cost = float(hist @ np.minimum(4.0 ** -e_of.astype(np.float64), own))
        if cost < best_cost:
            best, best_cost = e_sorted, cost
    return np.array(sorted(best, reverse=True), dtype=np.int64)


def _instance_maxima(model, images: np.ndarray, depth: int, batch: int = 64) -> dict:
    """Per image, per channel (or attention row) max |x| of every grouped boundary."""
    out: dict = {}
    for s in range(0, len(images), batch):
        fb = float_boundaries(model, torch.as_tensor(np.asarray(images[s:s + batch], dtype=np.float32)))
        for i in range(depth):
            for site, name, dim in (("norm1", "norm1", 1), ("attn", "attn", -1), ("attn_out", "attn_out", 1),
                                    ("norm2", "norm2", 1), ("gelu", "gelu", 1)):
                v = fb[f"blocks.{i}.{name}"].abs().amax(dim).double().numpy()
                out.setdefault((i, site), []).append(v.reshape(len(v), -1))
    return {k: np.concatenate(v) for k, v in out.items()}


def _site_quantizer(site: str, b, exps: np.ndarray) -> GroupQuantizer:
    """The `GroupQuantizer` of ``site`` of static block ``b`` with group exponents ``exps``."""
    def srange(bits):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    ex = np.asarray(exps, dtype=np.int64)
    if site in ("norm1", "norm2"):
        ln = getattr(b, site)
        return GroupQuantizer(ex, 1, int(ln.out_shift), *srange(ln.out_bits), float(ln.out_scale))
    if site == "attn":
        ob = b.softmax.out_bits
        return GroupQuantizer(ex, 1, SOFTMAX_RECIP_BITS - ob, 0, (1 << ob) - 1, 2.0 ** -ob)
    if site == "attn_out":
        return GroupQuantizer(ex, 1, int(ex[0]), *srange(b.av.out_bits), float(b.av.out_scale))
    return GroupQuantizer(ex, int(b.gelu.out_mult), int(b.gelu.out_shift), *srange(b.gelu.out_bits),
                          float(b.gelu.out_scale))


def _max_exp(site: str, b, max_exp: int) -> int:
    """Largest exponent the site's integer map allows (its shift must stay >= 0)."""
    limit = {"norm1": b.norm1.out_shift, "norm2": b.norm2.out_shift, "gelu": b.gelu.out_shift,
             "attn": SOFTMAX_RECIP_BITS - b.softmax.out_bits, "attn_out": b.av.shift}[site]
    return int(max(0, min(max_exp, limit)))


class _Builder:
    """Static model + calibration maxima -> igq `QuantizedViT` for any per-site group counts."""

    def __init__(self, model, q_static: QuantizedViT, maxima: dict, cfg: RecipeConfig, params: IgqParams):
        self.model, self.q, self.maxima, self.cfg, self.params = model, q_static, maxima, cfg, params
        self._exps, self._lin = {}, {}

    def exps(self, i: int, site: str, groups: int) -> np.ndarray:
        key = (i, site, groups)
        if key not in self._exps:
            b = self.q.blocks[i]
            gq = _site_quantizer(site, b, np.zeros(1, np.int64))
            self._exps[key] = choose_exps(self.maxima[(i, site)], gq.scale, gq.hi, groups,
                                          _max_exp(site, b, self.params.max_exp))
        return self._exps[key]

    def linear(self, i: int, site: str, finest: int):
        field, path = _CONSUMER[site]
        old = getattr(self.q.blocks[i], field)
        if finest == 0:
            return old
        key = (i, site, finest)
        if key not in self._lin:
            mod = self.model.blocks[i].get_submodule(path)
            gamma = {"proj": _gamma(self.model.blocks[i].ls1), "fc2": _gamma(self.model.blocks[i].ls2)}.get(field)
            new = freeze_linear(mod.weight, mod.bias, old.in_scale * 2.0 ** -finest, old.in_bits, old.w_bits,
                                old.out_scale, old.out_bits, self.cfg.weight_calibration, gamma=gamma)
            self._lin[key] = dataclasses.replace(new, res_mult=old.res_mult, res_shift=old.res_shift,
                                                 res_bits=old.res_bits)
        return self._lin[key]

    def build(self, groups: dict) -> QuantizedViT:
        """``groups[(block, site)]`` = G (missing: 1)."""
        blocks, igq = [], []
        for i, b in enumerate(self.q.blocks):
            gqs, lins = {}, {}
            for site in SITES:
                ex = self.exps(i, site, groups.get((i, site), 1))
                gqs[site] = _site_quantizer(site, b, ex)
                if site in _CONSUMER:
                    lins[_CONSUMER[site][0]] = self.linear(i, site, int(ex[0]))
            blocks.append(dataclasses.replace(b, **lins))
            igq.append(IgqBlock(**gqs))
        meta = dict(self.q.meta, recipe="igq", label=self.cfg.label,
                    igq_groups=[[int(len(g.exps)) for g in (blk.norm1, blk.attn, blk.attn_out, blk.norm2, blk.gelu)]
                                for blk in igq])
        return dataclasses.replace(self.q, blocks=tuple(blocks), meta=meta,
                                   extras={**self.q.extras, "igq": tuple(igq)})


def with_groups(builder: _Builder, groups: int) -> QuantizedViT:
    return builder.build({(i, s): groups for i in range(len(builder.q.blocks)) for s in SITES})


def build(model: torch.nn.Module, calib_images: np.ndarray, cfg: RecipeConfig,
          model_name: str = "model") -> QuantizedViT:
    """Calibrate the static recipe, then the group exponents, then allocate (or fix) G per site."""
    params = parse_params(cfg)
    check_supported(model)
    arch = vit_arch(model)
    calib = calib_images[: cfg.calib_images]
    q_static = freeze_static(model, collect_boundaries(model, calib), cfg, arch, model_name, len(calib))
    builder = _Builder(model, q_static, _instance_maxima(model, calib, arch["depth"]), cfg, params)
    if params.groups is not None:
        return with_groups(builder, params.groups)
    return allocate(builder, calib[: params.allocation_images], cfg)
