"""PyTorch side: model loading (timm), calibration, the recipes and the
fake-quant executor of a frozen `QuantizedViT`.

Public API (documented in README, kept stable)::

    model = reference.load_model()                  # bundled digits ViT (or a timm name + checkpoint)
    qvit = reference.quantize(model, calib_images, "configs/recipes/static_w8a8.yaml")
    qvit.save("model.qvit.npz"); QuantizedViT.load("model.qvit.npz")
    reference.FakeQuantExecutor(qvit).run(images)   # -> RunResult
    graph = reference.lower(model)                  # the typed float graph (simulator.ir.Graph)
    reference.float_forward(graph, images, torch.float64)   # its float function, == timm's forward
    qg = reference.quantize_graph(model, calib_images, load_recipe(path))   # static / tsptq / igq / mechanisms
"""

from __future__ import annotations

from reference.recipes.config import RecipeConfig, load_recipe

__all__ = ["load_model", "quantize", "FakeQuantExecutor", "RecipeConfig", "load_recipe", "load_dataset",
           "load_digits", "lower", "float_forward", "quantize_graph"]


def __getattr__(name):
    # torch, timm and numba load on first use, so that validating a recipe stays light
    if name == "FakeQuantExecutor":
        from reference.fakequant import FakeQuantExecutor
        return FakeQuantExecutor
    if name == "quantize":
        from reference.recipes import quantize
        return quantize
    if name == "load_model":
        from reference.models import load_model
        return load_model
    if name in ("load_dataset", "load_digits"):
        import reference.data as data
        return getattr(data, name)
    if name == "lower":                 # lowering rules import timm's model modules
        from reference.lowering import lower
        return lower
    if name == "quantize_graph":
        from reference.recipes.composed import quantize_graph
        return quantize_graph
    if name == "float_forward":
        from reference.float_ops import float_forward
        return float_forward
    raise AttributeError(name)
