"""`apq` on the lowered graph: early exits + per-block bit-widths, frozen as a `QuantizedGraph`.

The graph port of `reference.recipes.apq` (APQ/MAQEE, ../shared/seeds/003;
design in docs/recipes/apq.md), with the same formulas:

1. exit heads: `reference.recipes.apq._heads` (the bundled file for
   ``vit_digits``, else distilled from the final head); inserted into the
   lowered graph by `simulator.graph_exits.add_exits` (pool, norm, head,
   exit after ``blocks.{a}.x_out``);
2. per-block widths: one static freeze per bit candidate from ONE set of
   calibration statistics (`reference.recipes.static_graph.freeze_graph`);
   block ``i`` takes the quantizers and params of every ``blocks.{i}.*``
   tensor/op from candidate ``choice[i]`` (the residual stream's scales do
   not depend on the widths, so the blocks fit together); everything else
   from the first candidate. Per-block bits are thus plain per-tensor
   ``static`` quantizers -- no new quantizer kind;
3. exits frozen as `reference.recipes.apq.freeze_exits` does: norm input at
   the block's residual scale, ``s_n`` calibrated at the edge width, logits
   at ``1.25 max|logits| / (2**(rb-1) - 1)`` (``residual_bits``), confidence
   = max code of the integer softmax (``CONF_BITS``), ``threshold_q =
   ceil(tau 2**CONF_BITS)``. The float features (norm outputs, logits) are
   the float32 graph walk's (exits computed, never taken) -- except for a
   timm model whose exits read the class token: there `timm_exit_features`
   computes them as the old recipe does (timm's own block forward, the
   float32 heads), because the walk's float32 tokens differ from timm's in
   the last bits and ``max|logits|`` sets the logit scale;
4. thresholds and widths: given (``threshold: <tau>``, uniform widths or a
   given ``block_bits``), or -- ``threshold: search`` -- chosen by the
   search of the old recipe run on graph candidates
   (`reference.recipes.apq_graph_search`: same driver and formulas,
   profiles by the graph integer executor, costs from the graph's trace).

The exits alone are also the ``exits`` mechanism (`reference.recipes.mechanisms`,
`add_frozen_exits`): steps 1 and 3 on a graph that other mechanisms have
rewritten (exits read only the residual stream), at fixed thresholds
(`reference.recipes.params.ExitsParams`). Heads for models whose exits cannot
read timm's class token are distilled on the graph (`exit_heads`,
`distill_graph_heads`). The search and the per-block widths stay here.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import torch

from reference.float_ops import FloatOps
from reference.quantizers import calibrate, code_range, dyadic
from reference.recipes.apq import CONF_BITS, _heads, parse_params, threshold_code
from reference.recipes.config import RecipeConfig
from reference.recipes.mechanisms import register_mechanism
from reference.recipes.static import RESIDUAL_HEADROOM, freeze_layernorm, freeze_linear
from reference.recipes.static_graph import collect_graph_stats, freeze_graph, stat_names
from simulator import ir
from simulator.errors import InputError
from simulator.graph_exits import ExitQ, add_exits, graph_depth
from simulator.int_nonlinear import EXP_FRAC_BITS
from simulator.qgraph import QuantizedGraph, Quantizer
from simulator.qvit import SoftmaxQ
from simulator.walk import walk

__all__ = ["quantize_apq_graph", "freeze_apq_graph", "Candidates", "assemble_blocks", "head_params", "exit_features",
           "timm_exit_features", "freeze_exit_ops", "exit_heads", "distill_graph_heads", "add_frozen_exits"]

_BLOCK = re.compile(r"blocks\.(\d+)\.")


def head_params(heads) -> list[dict]:
    """Float params of `reference.exits.ExitHeads` as the dicts `add_exits` takes."""
    f = lambda t: t.detach().double().numpy()
    return [{"norm_weight": f(n.weight), "norm_bias": f(n.bias), "eps": n.eps,
             "head_weight": f(h.weight), "head_bias": f(h.bias)} for n, h in zip(heads.norms, heads.heads)]


def assemble_blocks(variants: list[QuantizedGraph], choice) -> tuple[dict, dict]:
    """Quantizers and params: ``blocks.{i}.*`` from ``variants[choice[i]]``, the rest from ``variants[0]``."""
    def pick(name, get):
        m = _BLOCK.match(name)
        return get(variants[choice[int(m.group(1))]] if m else variants[0], name)
    base = variants[0]
    q = {t: pick(t, lambda v, n: v.quantizers[n]) for t in base.quantizers}
    p = {o: pick(o, lambda v, n: v.params[n]) for o in base.params}
    return q, p


@torch.no_grad()
def exit_features(egraph: ir.Graph, images: np.ndarray, batch_size: int = 64,
                  wanted=lambda name: name.startswith("exits.") and name.endswith((".norm", ".logits"))
                  ) -> dict[str, np.ndarray]:
    """float64 copies of the ``wanted`` tensors (default: every ``exits.*.norm`` / ``exits.*.logits``)
    of the float32 walk (exits never taken)."""
    never = ir.Graph(ops=tuple(ir.Exit(o.name, o.inputs, o.outputs, threshold=1.0, after_block=o.after_block)
                               if o.kind == "exit" else o for o in egraph.ops),
                     input=egraph.input, outputs=egraph.outputs, params=egraph.params,
                     image_size=egraph.image_size, in_chans=egraph.in_chans)
    ops, out = FloatOps(never, torch.float32), {}

    def keep(name, t):
        if wanted(name):
            out.setdefault(name, []).append(t.double().numpy())

    for s in range(0, len(images), batch_size):
        walk(never, ops, torch.as_tensor(np.asarray(images[s:s + batch_size], dtype=np.float32)), keep)
    return {k: np.concatenate(v) for k, v in out.items()}


@torch.no_grad()
def timm_exit_features(model, heads, images) -> dict[str, np.ndarray]:
    """The old recipe's exit features (`reference.exits.class_tokens` + the float32 heads), float64."""
    from reference.exits import class_tokens
    toks, _ = class_tokens(model, images)
    out = {}
    for j, a in enumerate(heads.after):
        n = heads.norms[j](toks[a])
        out[f"exits.{j}.norm"] = n.double().numpy()
        out[f"exits.{j}.logits"] = heads.heads[j](n).double().numpy()
    return out


def _freeze_exit(op: ir.Exit, g: ir.Graph, q: dict, feats: dict, cfg: RecipeConfig):
    """Quantizers and params of one exit's norm / head / decision (the formulas of `apq.freeze_exits`)."""
    p = op.name.rsplit(".", 1)[0] + "."
    eb_w, eb_a, rb = (cfg.edge_bits or cfg.w_bits), (cfg.edge_bits or cfg.a_bits), cfg.residual_bits
    x = g.producers()[p + "pool"].inputs[0]
    s_x = float(q[x].scale)
    n, logits = feats[p + "norm"], feats[p + "logits"]
    s_n = float(calibrate(n, eb_a, cfg.act_calibration, percentile=cfg.percentile).scale)
    s_l = max(float(np.abs(logits).max()) * RESIDUAL_HEADROOM, 1e-8) / code_range(rb)[1]
    gn, gh = g.params[p + "norm"], g.params[p + "head"]
    ln = SimpleNamespace(weight=gn["weight"], bias=gn["bias"], eps=g.op(p + "norm").eps,
                         normalized_shape=gn["weight"].shape)
    m, k = dyadic(s_l * math.log2(math.e) * 2.0 ** EXP_FRAC_BITS)
    quantizers = {p + "pool": q[x], p + "norm": Quantizer("static", s_n, eb_a),
                  p + "logits": Quantizer("static", s_l, rb),
                  p + "confidence": Quantizer("static", 2.0 ** -CONF_BITS, CONF_BITS, signed=False)}
    params = {p + "norm": freeze_layernorm(ln, s_x, rb, s_n, eb_a),
              p + "head": freeze_linear(gh["weight"], gh["bias"], s_n, eb_a, eb_w, s_l, rb, cfg.weight_calibration),
              op.name: ExitQ(SoftmaxQ(in_mult=int(m), in_shift=int(k), in_scale=s_l, out_bits=CONF_BITS),
                             threshold_code(op.threshold))}
    return quantizers, params


def freeze_exit_ops(egraph: ir.Graph, q: dict, feats: dict, cfg: RecipeConfig) -> tuple[dict, dict]:
    """Quantizers and params of every exit of ``egraph`` (`_freeze_exit`), the residual stream at ``q``'s scales."""
    exit_q, exit_p = {}, {}
    for op in egraph.ops:
        if op.kind == "exit":
            eq, ep = _freeze_exit(op, egraph, q, feats, cfg)
            exit_q.update(eq)
            exit_p.update(ep)
    return exit_q, exit_p


class Candidates:
    """Everything a candidate model is assembled from: one exit-free static variant per width
    (``keys``), the graph with exits (never taken) and the frozen exit quantizers/params."""

    def __init__(self, graph: ir.Graph, calib: np.ndarray, cfg: RecipeConfig, after, heads: list[dict], keys,
                 model_name: str = "model", features=None):
        self.keys = [tuple(k) for k in keys]
        self.graph, self.depth = graph, graph_depth(graph)
        stats = collect_graph_stats(graph, calib, stat_names(graph))
        self.variants = [freeze_graph(graph, stats, cfg.with_bits(*b), model_name, len(calib)) for b in self.keys]
        self.egraph = add_exits(graph, after, heads, [1.0] * len(after))
        self.after = [int(a) for a in after]
        feats = exit_features(self.egraph, calib) if features is None else features
        self.exit_q, self.exit_p = freeze_exit_ops(self.egraph, self.variants[0].quantizers, feats, cfg)

    def build(self, choice, taus=None) -> QuantizedGraph:
        """Block ``i`` at width ``keys[choice[i]]``; exits with thresholds ``taus`` (default: never taken)."""
        taus = [1.0] * len(self.after) if taus is None else [float(t) for t in taus]
        q, params = assemble_blocks(self.variants, choice)
        q.update(self.exit_q)
        params.update(self.exit_p)
        it = iter(taus)
        ops = tuple(replace(o, threshold=next(it)) if o.kind == "exit" else o for o in self.egraph.ops)
        for o in ops:
            if o.kind == "exit":
                params[o.name] = replace(params[o.name], threshold_q=threshold_code(o.threshold))
        g = self.egraph
        graph = ir.Graph(ops=ops, input=g.input, outputs=g.outputs, params=g.params, image_size=g.image_size,
                         in_chans=g.in_chans)
        meta = {**self.variants[0].meta, "recipe": "apq", "block_bits": [list(self.keys[c]) for c in choice],
                "exit_after_blocks": list(self.after), "exit_thresholds": taus,
                "exit_threshold_codes": [threshold_code(t) for t in taus]}
        return QuantizedGraph(graph=graph, quantizers=q, params=params, meta=meta)


def freeze_apq_graph(graph: ir.Graph, calib: np.ndarray, cfg: RecipeConfig, after, heads: list[dict], taus,
                     block_bits=None, model_name: str = "model", features=None) -> QuantizedGraph:
    """Calibrate the exit-free ``graph`` on ``calib``, freeze one static variant per width in ``block_bits``
    (default: ``(w_bits, a_bits)`` everywhere), insert and freeze the exits (float ``features`` of
    `exit_features` form; default: the float32 walk's)."""
    depth = graph_depth(graph)
    block_bits = [tuple(b) for b in (block_bits or [(cfg.w_bits, cfg.a_bits)] * depth)]
    if len(block_bits) != depth:
        raise InputError(f"block_bits: {len(block_bits)} entries for {depth} blocks")
    keys = list(dict.fromkeys(block_bits))
    c = Candidates(graph, calib, cfg, after, heads, keys, model_name, features)
    return c.build([keys.index(b) for b in block_bits], taus)


def quantize_apq_graph(model, calib_images: np.ndarray, cfg: RecipeConfig, model_name: str = "model",
                       block_bits=None, thresholds=None) -> QuantizedGraph:
    """The ``apq`` recipe on the graph for a timm ViT: heads, widths and thresholds as the recipe says.

    ``threshold: search`` (and no ``thresholds``/``block_bits`` given) runs the search on graph
    candidates; given ``thresholds`` (one per exit) and ``block_bits`` (one pair per block) override it."""
    if cfg.recipe != "apq":
        raise InputError(f"recipe {cfg.recipe!r}: quantize_apq_graph implements 'apq'")
    from reference.lowering import lower
    from timm.models.swin_transformer import SwinTransformer
    if isinstance(model, SwinTransformer):     # exits read blocks.{i}.x_out of a flat stack of blocks
        raise InputError(f"recipe {cfg.label}: apq early exits are not supported for Swin (hierarchical stages)")
    p = parse_params(cfg.params, where=f"recipe {cfg.label}")
    calib = np.asarray(calib_images[: cfg.calib_images], dtype=np.float32)
    graph = lower(model)
    after, heads, feats = exit_heads(model, graph, calib, p, model_name)
    if thresholds is None and block_bits is None and p.threshold == "search":
        from reference.recipes.apq_graph_search import search_graph
        keys = ((cfg.w_bits, cfg.a_bits),) if p.allocation == "uniform" else p.bit_candidates
        cands = Candidates(graph, calib, cfg, after, heads, keys, model_name, feats)
        choice, taus, report, cost = search_graph(model, calib, cands, p)
        qg = cands.build(choice, taus)
        return QuantizedGraph(qg.graph, qg.quantizers, qg.params, {**qg.meta, "apq": report, "apq_search": cost})
    if thresholds is None:
        if p.threshold == "search":
            raise InputError(f"recipe {cfg.label}: threshold: search with given block_bits needs thresholds")
        thresholds = [float(p.threshold)] * len(after)
    return freeze_apq_graph(graph, calib, cfg, after, heads, thresholds, block_bits, model_name, feats)


# --- exit heads for any lowered model; the ``exits`` mechanism ----------------------------------
def _timm_class_token_exits(model, graph: ir.Graph) -> bool:
    """The old recipe's heads and features apply: a timm model pooling its class token, with a LayerNorm
    final norm and a linear head (`reference.exits`' heads read ``x[:, 0]`` and copy ``model.norm`` /
    ``model.head``)."""
    pools = [o for o in graph.ops if o.kind == "pool"]
    return (isinstance(model, torch.nn.Module) and bool(pools) and pools[0].mode == "token" and pools[0].index == 0
            and isinstance(getattr(model, "norm", None), torch.nn.LayerNorm)
            and isinstance(getattr(model, "head", None), torch.nn.Linear))


def exit_heads(model, graph: ir.Graph, calib: np.ndarray, p, model_name: str = "model"):
    """``(after, heads as `add_exits` dicts, float exit features or None)`` for ``p``'s ``exit_heads`` /
    ``exits_every`` / ``seed`` (`APQParams` or `ExitsParams`).

    The old recipe's heads (`reference.recipes.apq._heads`: the bundled file for ``vit_digits``, a
    given file, or distilled on timm's class tokens) and, with class-token pooling, its features
    (`timm_exit_features`); any other lowered model (avg pooling, no class token, final norm
    Identity, or an `ir.Graph`) gets heads distilled on the graph (`distill_graph_heads`)."""
    if _timm_class_token_exits(model, graph) or (isinstance(model, torch.nn.Module) and (
            p.exit_heads not in ("auto", "distill") or (p.exit_heads == "auto" and model_name == "vit_digits"))):
        heads = _heads(model, calib, p, model_name)
        feats = timm_exit_features(model, heads, calib) if _timm_class_token_exits(model, graph) else None
        return heads.after, head_params(heads), feats
    if p.exit_heads not in ("auto", "distill"):
        raise InputError(f"exit_heads {p.exit_heads!r}: a heads file needs the timm model, got a lowered graph")
    from reference.exits import default_exits_after
    after = default_exits_after(graph_depth(graph), p.exits_every)
    if not after:
        raise InputError(f"model {model_name}: depth {graph_depth(graph)} leaves no block for an exit "
                         f"every {p.exits_every} blocks")
    return after, distill_graph_heads(graph, calib, after, p.seed), None


def _final_head(graph: ir.Graph) -> dict:
    """The graph's classifier (first ``head`` op) and the LayerNorm before it (``fc_norm``, else ``norm``,
    else the identity) as `add_exits` head params: the initial point of distilled exit heads."""
    heads = [o for o in graph.ops if o.kind == "head"]
    if not heads:
        raise InputError("exits: the model has no classifier head (num_classes=0) to give the exits")
    hp = graph.params[heads[0].name]
    norms = {o.name: o for o in graph.ops if o.kind == "layer_norm" and o.name in ("fc_norm", "norm")}
    n = norms.get("fc_norm") or norms.get("norm")
    dim = hp["weight"].shape[1]
    np_ = graph.params[n.name] if n is not None else {}
    one = lambda key, default: np.asarray(np_[key]) if np_.get(key) is not None else default   # noqa: E731
    return {"norm_weight": one("weight", np.ones(dim)), "norm_bias": one("bias", np.zeros(dim)),
            "eps": n.eps if n is not None else 1e-6, "head_weight": np.asarray(hp["weight"]),
            "head_bias": np.asarray(hp["bias"]) if hp.get("bias") is not None else np.zeros(len(hp["weight"]))}


def distill_graph_heads(graph: ir.Graph, calib: np.ndarray, after, seed: int = 0) -> list[dict]:
    """Exit heads after blocks ``after``, fitted by `reference.exits.fit_exit_heads` (KL to the final
    logits, from a copy of the final norm + head, `_final_head`) on the model's own pooling of the
    residual stream (``exits.{j}.pool``) and the final output of the float32 graph walk."""
    from reference.exits import ExitHeads, fit_exit_heads
    init = _final_head(graph)
    egraph = add_exits(graph, after, [init] * len(after), [1.0] * len(after))
    out = graph.outputs[0]
    f = exit_features(egraph, calib, wanted=lambda n: n == out or (n.startswith("exits.") and n.endswith(".pool")))
    heads = ExitHeads(after, init["head_weight"].shape[1], len(init["head_weight"]), eps=init["eps"])
    with torch.no_grad():
        for n, h in zip(heads.norms, heads.heads):
            n.weight.copy_(torch.tensor(np.array(init["norm_weight"])))
            n.bias.copy_(torch.tensor(np.array(init["norm_bias"])))
            h.weight.copy_(torch.tensor(np.array(init["head_weight"])))
            h.bias.copy_(torch.tensor(np.array(init["head_bias"])))
    feats = [torch.as_tensor(f[f"exits.{j}.pool"], dtype=torch.float32) for j in range(len(after))]
    fit_exit_heads(heads, feats, torch.as_tensor(f[out], dtype=torch.float32), "kl", seed=seed)
    return head_params(heads)


def add_frozen_exits(qg: QuantizedGraph, model, calib: np.ndarray, cfg: RecipeConfig, p,
                     model_name: str = "model") -> QuantizedGraph:
    """``qg`` with exits (`ExitsParams` ``p``: heads, positions, fixed thresholds) inserted after blocks
    and frozen as the apq recipe freezes them (`freeze_exit_ops`), on ``qg``'s residual scales."""
    after, heads, feats = exit_heads(model, qg.graph, calib, p, model_name)
    taus = [p.threshold] * len(after) if isinstance(p.threshold, float) else list(p.threshold)
    if len(taus) != len(after):
        raise InputError(f"exits: threshold lists {len(taus)} values for {len(after)} exits (after blocks "
                         f"{list(after)})")
    egraph = add_exits(qg.graph, after, heads, taus)
    eq, ep = freeze_exit_ops(egraph, qg.quantizers, exit_features(egraph, calib) if feats is None else feats, cfg)
    meta = {**qg.meta, "exit_after_blocks": [int(a) for a in after], "exit_thresholds": taus,
            "exit_threshold_codes": [threshold_code(t) for t in taus]}
    return QuantizedGraph(graph=egraph, quantizers={**qg.quantizers, **eq}, params={**qg.params, **ep}, meta=meta)


@register_mechanism("exits", claims=lambda qg, params: {})
def _exits_step(qg: QuantizedGraph, ctx, params, cfg: RecipeConfig, owned) -> QuantizedGraph:
    """The ``exits`` mechanism: `add_frozen_exits` on whatever quantizers the other mechanisms left
    (exits read only the residual stream, which stays static)."""
    return add_frozen_exits(qg, ctx.model, ctx.images, cfg, params, ctx.model_name)
