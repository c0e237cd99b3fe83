"""Which forward implementation a run uses: the integer graph or the legacy walks.

Issue 13 moves every recipe onto one integer graph lowered from the timm
model (`simulator.ir`, `simulator.walk`, `simulator.qgraph`); until every
mechanism is ported, the hand-written per-model walks (`simulator.executor`,
`reference.fakequant`) still run the rest. ``--engine`` picks:

* ``legacy``: the hand-written walks (every recipe; the ViT features listed in
  `reference.vit_float.check_supported` only);
* ``graph``: the lowered graph (every lowered timm ViT configuration, see
  docs/graph.md; all five recipes, `GRAPH_RECIPES`);
* ``auto`` (default): ``legacy`` where it applies, so the published tables
  keep their exact provenance, else ``graph`` (e.g. DeiT-III, CLIP, register
  tokens, avg pooling, distilled DeiT), else the legacy refusal.

Both engines give identical codes where both apply (every recipe on the
bundled model: tests/reference/test_graph_*.py). Part of the CLI's
composition root: upstream modules are imported lazily.
"""

from __future__ import annotations

from simulator.errors import InputError

__all__ = ["ENGINES", "GRAPH_RECIPES", "choose_engine", "graph_quantizer", "graph_executors"]

ENGINES = ("auto", "legacy", "graph")

# recipe name -> "module:function" of its graph calibrator
GRAPH_RECIPES = {
    "static": "reference.recipes.composed:quantize_graph",   # + any `mechanisms:` list
    "tsptq": "reference.recipes.composed:quantize_graph",
    "igq": "reference.recipes.composed:quantize_graph",
    "scalepredictor": "reference.recipes.scalepredictor_graph:quantize_scalepredictor_graph",
    "apq": "reference.recipes.apq_graph:quantize_apq_graph",
}


def _graph_refusal(recipe: str) -> str | None:
    if recipe in GRAPH_RECIPES:
        return None
    return (f"recipe {recipe!r} does not run on the integer graph yet (ported: "
            f"{', '.join(sorted(GRAPH_RECIPES))}); use --engine legacy")


def choose_engine(requested: str, model, recipe: str, mechanisms=()) -> str:
    """``legacy`` or ``graph`` for this model and recipe, or an `InputError` saying why neither.
    A recipe composing ``mechanisms`` runs on the graph only."""
    from reference.vit_float import check_supported

    if requested not in ENGINES:
        raise InputError(f"--engine: expected one of {', '.join(ENGINES)}, got {requested!r}")
    if mechanisms:
        if requested == "legacy":
            raise InputError(f"--engine legacy: a recipe with mechanisms ({', '.join(n for n, _ in mechanisms)}) "
                             "runs on the integer graph only; use --engine graph or auto")
        return "graph"
    if requested == "graph":
        refusal = _graph_refusal(recipe)
        if refusal:
            raise InputError(f"--engine graph: {refusal}")
        return "graph"
    try:
        check_supported(model)
        return "legacy"
    except InputError as legacy_refusal:
        if requested == "legacy" or _graph_refusal(recipe):
            raise
        del legacy_refusal
        return "graph"


def graph_quantizer(recipe: str):
    """The graph calibrator of ``recipe``: ``f(model, calib_images, cfg, model_name=...) -> QuantizedGraph``."""
    import importlib

    module, func = GRAPH_RECIPES[recipe].split(":")
    return getattr(importlib.import_module(module), func)


def graph_executors(qgraph, backend: str):
    """(fake-quant integer-only, fake-quant float-nonlinear, integer simulator) over one QuantizedGraph."""
    from reference.fakequant_ops import GraphFakeQuantExecutor
    from simulator.int_ops import GraphIntegerExecutor

    return (GraphFakeQuantExecutor(qgraph, "integer"), GraphFakeQuantExecutor(qgraph, "float"),
            GraphIntegerExecutor(qgraph, gemm_backend=backend))
