"""The recipe registry: recipe name -> its graph calibrator.

``quantize(model, calib_images, recipe)`` accepts a `RecipeConfig`, a path to
a recipe YAML, or a mapping; it lowers the model (`reference.lower`),
calibrates the recipe on the integer graph and returns the frozen
`simulator.qgraph.QuantizedGraph` (static / tsptq / igq and any
``mechanisms:`` list through `reference.recipes.composed`; scalepredictor and
apq through their own calibrators).

The recipe modules (torch) load on first use of `quantize` or `RECIPES`, so
that `reference.recipes.config` (YAML validation, params included) stays light.
"""

from __future__ import annotations

import importlib
import os

from reference.recipes.config import RECIPE_NAMES, load_recipe, recipe_from_dict
from simulator.errors import InputError

__all__ = ["quantize", "RECIPES", "CALIBRATORS"]

# recipe name -> "module:function" of its graph calibrator, f(model, calib, cfg, model_name=...) -> QuantizedGraph
CALIBRATORS = {
    "static": "reference.recipes.composed:quantize_graph",   # + any `mechanisms:` list
    "tsptq": "reference.recipes.composed:quantize_graph",
    "igq": "reference.recipes.composed:quantize_graph",
    "scalepredictor": "reference.recipes.scalepredictor_graph:quantize_scalepredictor_graph",
    "apq": "reference.recipes.apq_graph:quantize_apq_graph",
}
assert set(CALIBRATORS) == set(RECIPE_NAMES)


def calibrator(recipe: str):
    """The graph calibrator of ``recipe`` (imports its module)."""
    if recipe not in CALIBRATORS:
        raise InputError(f"recipe {recipe!r}: expected one of {', '.join(sorted(CALIBRATORS))}")
    module, func = CALIBRATORS[recipe].split(":")
    return getattr(importlib.import_module(module), func)


def _registry() -> dict:
    return {name: calibrator(name) for name in RECIPE_NAMES}


def __getattr__(name):
    if name == "RECIPES":      # name -> graph calibrator
        return _registry()
    raise AttributeError(name)


def quantize(model, calib_images, recipe="configs/recipes/static_w8a8.yaml", model_name: str = "model", **kw):
    """Lower ``model``, calibrate it on ``calib_images`` [N, C, H, W] and freeze ``recipe``
    (-> `simulator.qgraph.QuantizedGraph`). ``model`` may be an already lowered `simulator.ir.Graph`;
    ``kw`` goes to the recipe's calibrator (e.g. ``image_size`` for ``dynamic_img_size`` models)."""
    if isinstance(recipe, (str, os.PathLike)):
        cfg = load_recipe(recipe)
    elif isinstance(recipe, dict):
        cfg = recipe_from_dict(recipe)
    else:
        cfg = recipe
    from reference.quantizers import DyadicRangeError

    try:
        return calibrator(cfg.recipe)(model, calib_images, cfg, model_name=model_name, **kw)
    except DyadicRangeError as e:   # degenerate scales that the calibration checks did not catch
        raise InputError(f"model {model_name}: recipe {cfg.label}: {e} (degenerate calibration ranges; "
                         "check the checkpoint's weights)") from None
