"""The recipe registry: one module per recipe, all on `reference.quantizers`.

``quantize(model, calib_images, recipe)`` accepts a `RecipeConfig`, a path to
a recipe YAML, or a mapping, and returns the frozen `QuantizedViT`.

The recipe modules (torch) load on first use of `quantize` or `RECIPES`, so
that `reference.recipes.config` (YAML validation, params included) stays light.
"""

from __future__ import annotations

import importlib
import os

from reference.recipes.config import RECIPE_NAMES, load_recipe, recipe_from_dict
from simulator.errors import InputError

__all__ = ["quantize", "RECIPES"]


def _registry() -> dict:
    return {name: importlib.import_module(f"reference.recipes.{name}").build for name in RECIPE_NAMES}


def __getattr__(name):
    if name == "RECIPES":      # name -> build function
        return _registry()
    raise AttributeError(name)


def quantize(model, calib_images, recipe="configs/recipes/static_w8a8.yaml", model_name: str = "model"):
    """Calibrate ``model`` on ``calib_images`` [N, C, H, W] and freeze ``recipe`` (-> `QuantizedViT`)."""
    if isinstance(recipe, (str, os.PathLike)):
        cfg = load_recipe(recipe)
    elif isinstance(recipe, dict):
        cfg = recipe_from_dict(recipe)
    else:
        cfg = recipe
    if cfg.mechanisms:
        raise InputError(f"recipe {cfg.label}: mechanisms compose on the integer graph only "
                         "(reference.quantize_graph)")
    from reference.quantizers import DyadicRangeError

    try:
        return _registry()[cfg.recipe](model, calib_images, cfg, model_name=model_name)
    except DyadicRangeError as e:   # degenerate scales that the calibration checks did not catch
        raise InputError(f"model {model_name}: recipe {cfg.label}: {e} (degenerate calibration ranges; "
                         "check the checkpoint's weights)") from None
