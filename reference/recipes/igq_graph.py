"""`igq` on the lowered graph: IGQ-ViT per-instance groups as ``grouped`` quantizers.

IGQ-ViT (Moon, Kim, Cheon, Ham, CVPR 2024, Sec. 3.2-3.3) with the
hardware-minded choices of the old recipe (`reference.recipes.igq`,
docs/recipes/igq.md), whose functions this module reuses: group scales
``s_static * 2**-e_g`` (`choose_exps` on per-instance channel/row maxima of
the calibration images), the finest non-clipping group per image by integer
comparisons (`simulator.igq_graph`), one GEMM on shifted operands, and the
BOP-budget allocation (`reference.recipes.igq_allocation`'s greedy, over
the graph executors here).

Sites (`grouped_sites`), found on the graph rather than listed per block: an
owner tensor (see `reference.recipes.static_graph.owners`) written by a
``layer_norm`` / ``activation`` / ``matmul`` and read only by (non-head)
linear layers whose output is not an int32 accumulator -- channel groups --
or a ``softmax`` output read only by matmuls -- row groups. On a plain ViT
these are the old recipe's five sites per block: ``norm1``, ``attn``,
``attn_out``, ``norm2``, ``gelu``; patch embedding and head keep static
quantizers.

Freezing: the static graph (`static_graph.freeze_graph`), then each site's
quantizer becomes ``grouped`` (``exps`` for its G, ``exps[-1] = 0``: the
static scale is the coarsest group) and each linear reading a site is frozen
again for the input scale ``s * 2**-exps[0]`` (`static_graph._freeze_op`, the
static formulas). G = 1 (``exps = (0,)``) is the static graph bit for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from reference.float_ops import FloatOps
from reference.recipes.config import RecipeConfig
from reference.recipes.igq import choose_exps, parse_params
from reference.recipes.mechanisms import register_mechanism
from reference.recipes.static_graph import _consumers, _freeze_op, calibrate_static, owners
from simulator import ir
from simulator.errors import InputError
from simulator.igq_graph import GROUPED_PRODUCERS
from simulator.int_nonlinear import SOFTMAX_RECIP_BITS
from simulator.qgraph import QuantizedGraph
from simulator.walk import walk

__all__ = ["grouped_sites", "instance_maxima", "GraphGroupBuilder", "quantize_igq_graph", "group"]


def _site_of(shapes: dict, own: dict, cons: dict, prod: dict, q: dict, t: str) -> tuple[str, bool] | None:
    """``(computing member, rows)`` when owner tensor ``t`` can be grouped, else None."""
    members = [m for m in own if own[m] == t]
    src = [m for m in members if prod[m].kind in GROUPED_PRODUCERS]
    if len(src) != 1 or q[t].kind != "static" or np.ndim(q[t].scale) != 0:
        return None
    readers = [(op, i) for m in members for op, i in cons.get(m, []) if not (op.kind == "merge_heads" and
                                                                              op.outputs[0] in members)]
    if not readers:
        return None
    if prod[src[0]].kind == "softmax":
        ok = all(op.kind == "matmul" and i == 0 and q[op.outputs[0]].kind != "accumulator" for op, i in readers)
        return (src[0], True) if ok else None
    p = prod[src[0]]
    if p.kind == "matmul" and (q[p.outputs[0]].kind == "accumulator" or len(shapes[src[0]]) != 4):
        return None
    if len(shapes[t]) != 3:
        return None
    ok = all(op.kind == "linear" and i == 0 and q[op.outputs[0]].kind != "accumulator" for op, i in readers)
    return (src[0], False) if ok else None


def grouped_sites(qg: QuantizedGraph) -> dict[str, tuple[str, bool]]:
    """Owner tensor -> (the member its producer writes, rows?) for every groupable boundary, in walk order."""
    g = qg.graph
    own, cons, prod, shapes = owners(g), _consumers(g), g.producers(), ir.tensor_shapes(g)
    out = {}
    for t in g.tensor_names()[1:]:
        if own[t] == t and (s := _site_of(shapes, own, cons, prod, qg.quantizers, t)) is not None:
            out[t] = s
    return out


@torch.no_grad()
def instance_maxima(graph: ir.Graph, images: np.ndarray, sites: dict, batch_size: int = 64) -> dict:
    """Per image, max |x| of every channel (over tokens) or row (``rows``) of each site; [N, C or R]."""
    out: dict = {}
    ops = FloatOps(graph, torch.float32)

    def keep(name, t):
        if name in sites:
            v = t.abs().amax(-1 if sites[name][1] else -2).double().numpy()
            out.setdefault(name, []).append(v.reshape(len(v), -1))

    for s in range(0, len(images), batch_size):
        walk(graph, ops, torch.as_tensor(np.asarray(images[s:s + batch_size], dtype=np.float32)), keep)
    return {k: np.concatenate(v) for k, v in out.items()}


def _max_exp(op: ir.Op, params, limit: int) -> int:
    """Largest exponent the producer's integer map allows (its shift stays >= 0)."""
    shift = {"layer_norm": lambda p: p.out_shift, "activation": lambda p: p.out_shift,
             "softmax": lambda p: SOFTMAX_RECIP_BITS - p.out_bits, "matmul": lambda p: p.shift}[op.kind](params)
    return int(max(0, min(limit, int(shift))))


class GraphGroupBuilder:
    """Static `QuantizedGraph` + calibration maxima -> igq `QuantizedGraph` for any per-site G."""

    def __init__(self, static: QuantizedGraph, maxima: dict, cfg: RecipeConfig, params, sites: dict):
        self.static, self.maxima, self.cfg, self.params, self.sites = static, maxima, cfg, params, sites
        self.own, self.prod = owners(static.graph), static.graph.producers()
        self._exps: dict = {}
        self._lin: dict = {}

    def exps(self, site: str, groups: int) -> tuple:
        key = (site, groups)
        if key not in self._exps:
            qz, src = self.static.quantizers[site], self.prod[self.sites[site][0]]
            limit = _max_exp(src, self.static.params[src.name], self.params.max_exp)
            self._exps[key] = tuple(int(e) for e in choose_exps(self.maxima[site], float(qz.scale), qz.hi,
                                                                groups, limit))
        return self._exps[key]

    def _linear(self, op: ir.Op, q: dict):
        qi = q[op.inputs[0]]
        key = (op.name, qi.exps[0])
        if key not in self._lin:
            fine = dataclasses.replace(qi, kind="static", scale=float(qi.scale) * 2.0 ** -qi.exps[0], exps=None,
                                       rows=False)
            self._lin[key] = _freeze_op(op, self.static.graph, {**q, op.inputs[0]: fine}, self.cfg, self.prod)
        return self._lin[key]

    def build(self, groups: dict, refreeze: bool = True) -> QuantizedGraph:
        """``groups[site]`` = G (missing: 1). ``refreeze=False`` keeps the static params of the linears
        reading a site (their multipliers are then wrong, their shapes and widths right): enough for
        `simulator.graph_trace` (BOPs), not for running."""
        s = self.static
        q, params = dict(s.quantizers), dict(s.params)
        for site, (_, rows) in self.sites.items():
            gq = dataclasses.replace(s.quantizers[site], kind="grouped", exps=self.exps(site, groups.get(site, 1)),
                                     rows=rows)
            q.update({t: gq for t in self.own if self.own[t] == site})
        for op in s.graph.ops:
            if refreeze and op.kind == "linear" and q[op.inputs[0]].kind == "grouped" and q[op.inputs[0]].exps[0] > 0:
                params[op.name] = self._linear(op, q)
        meta = dict(s.meta, recipe=self.cfg.recipe, label=self.cfg.label,
                    igq_groups={site: len(q[site].exps) for site in self.sites})
        return QuantizedGraph(graph=s.graph, quantizers=q, params=params, meta=meta)


def quantize_igq_graph(model, calib_images: np.ndarray, cfg: RecipeConfig, model_name: str = "model",
                       image_size: tuple[int, int] | None = None) -> QuantizedGraph:
    """Lower ``model`` (or take an `ir.Graph`), calibrate static scales and group exponents on the
    first ``cfg.calib_images`` images, then fix G (``params.groups``) or allocate it under
    ``params.bop_budget`` (`reference.recipes.igq_graph_allocation`)."""
    if cfg.recipe != "igq":
        raise InputError(f"recipe {cfg.recipe!r}: quantize_igq_graph implements 'igq'")
    params = parse_params(cfg)
    calib, _, static = calibrate_static(model, calib_images, cfg, model_name, image_size)
    return group(static, model, calib, cfg, params)


def group(base: QuantizedGraph, model, calib: np.ndarray, cfg: RecipeConfig, params, owned=None) -> QuantizedGraph:
    """Make the groupable boundaries of ``base`` (only those in ``owned`` when given) ``grouped``:
    fixed G, or allocated under ``params.bop_budget`` against ``model``'s logits."""
    sites = {t: s for t, s in grouped_sites(base).items() if owned is None or t in owned}
    builder = GraphGroupBuilder(base, instance_maxima(base.graph, calib, sites), cfg, params, sites)
    if params.groups is not None:
        return builder.build({site: params.groups for site in sites})
    from reference.recipes.igq_graph_allocation import allocate_graph
    return allocate_graph(builder, model, calib[: params.allocation_images], cfg)


@register_mechanism("groups", claims=lambda qg, params: dict.fromkeys(grouped_sites(qg), 1))
def _groups_step(qg: QuantizedGraph, ctx, params, cfg: RecipeConfig, owned) -> QuantizedGraph:
    return group(qg, ctx.model, ctx.images, cfg, params, owned)
