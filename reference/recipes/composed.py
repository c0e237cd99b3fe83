"""`quantize_graph` for every graph recipe: ``static``, ``tsptq``, ``igq``, and ``static`` with
``mechanisms:`` composed on it (`reference.recipes.mechanisms` has the registry and the
precedence rule; importing this module registers every mechanism)."""

from __future__ import annotations

import numpy as np

from reference.recipes import apq_graph, igq_graph, scalepredictor_graph, tsptq_graph  # noqa: F401 (registers)
from reference.recipes.config import RecipeConfig
from reference.recipes.mechanisms import MECHANISMS, Calibration, owners_of
from reference.recipes.static_graph import calibrate_static
from simulator.errors import InputError
from simulator.qgraph import QuantizedGraph

__all__ = ["quantize_graph", "compose", "MECHANISMS"]


def compose(static: QuantizedGraph, ctx: Calibration, cfg: RecipeConfig, chosen: tuple) -> QuantizedGraph:
    """Apply ``chosen`` = ((name, params), ...) to ``static``, each on the tensors it owns, in precedence order."""
    owned = owners_of(static, chosen)
    qg = static
    for name in (n for n in MECHANISMS if n in owned):
        qg = MECHANISMS[name].apply(qg, ctx, dict(chosen)[name], cfg, owned[name])
    meta = dict(qg.meta, recipe=cfg.recipe, label=cfg.label,
                mechanisms={name: sorted(owned[name]) for name, _ in chosen})
    return QuantizedGraph(graph=qg.graph, quantizers=qg.quantizers, params=qg.params, meta=meta)


def quantize_graph(model, calib_images: np.ndarray, cfg: RecipeConfig, model_name: str = "model",
                   image_size: tuple[int, int] | None = None) -> QuantizedGraph:
    """Lower ``model`` (a timm ViT or an `ir.Graph`), calibrate ``cfg`` on the first ``cfg.calib_images``
    of ``calib_images`` and freeze it: ``tsptq`` is static + [two_scaled], ``igq`` static + [groups]."""
    if cfg.recipe == "tsptq":
        return tsptq_graph.quantize_graph_tsptq(model, calib_images, cfg, model_name, image_size)
    if cfg.recipe == "igq":
        return igq_graph.quantize_igq_graph(model, calib_images, cfg, model_name, image_size)
    if cfg.recipe != "static":
        raise InputError(f"recipe {cfg.recipe!r}: the graph quantizer implements static (with mechanisms), "
                         "tsptq and igq so far")
    calib, stats, static = calibrate_static(model, calib_images, cfg, model_name, image_size)
    if not cfg.mechanisms:
        return static
    return compose(static, Calibration(model, calib, stats, model_name), cfg, cfg.mechanisms)
