"""The recipe registry: one module per recipe, all on `reference.quantizers`.

``quantize(model, calib_images, recipe)`` accepts a `RecipeConfig`, a path to
a recipe YAML, or a mapping, and returns the frozen `QuantizedViT`.
"""

from __future__ import annotations

import os

from reference.recipes import apq, igq, scalepredictor, static, tsptq
from reference.recipes.config import load_recipe, recipe_from_dict
from reference.quantizers import DyadicRangeError
from simulator.errors import InputError
from simulator.qvit import QuantizedViT

__all__ = ["quantize", "RECIPES"]

RECIPES = {"static": static.build, "tsptq": tsptq.build, "igq": igq.build, "scalepredictor": scalepredictor.build,
           "apq": apq.build}


def quantize(model, calib_images, recipe="configs/recipes/static_w8a8.yaml", model_name: str = "model") -> QuantizedViT:
    """Calibrate ``model`` on ``calib_images`` [N, C, H, W] and freeze ``recipe``."""
    if isinstance(recipe, (str, os.PathLike)):
        cfg = load_recipe(recipe)
    elif isinstance(recipe, dict):
        cfg = recipe_from_dict(recipe)
    else:
        cfg = recipe
    try:
        return RECIPES[cfg.recipe](model, calib_images, cfg, model_name=model_name)
    except DyadicRangeError as e:   # degenerate scales that the calibration checks did not catch
        raise InputError(f"model {model_name}: recipe {cfg.label}: {e} (degenerate calibration ranges; "
                         "check the checkpoint's weights)") from None
