"""PyTorch side: model loading (timm), lowering to the integer graph,
calibration, the recipes and the fake-quant executor of a frozen `QuantizedGraph`.

Public API (documented in README, kept stable)::

    model = reference.load_model()                  # bundled digits ViT (or a timm name + checkpoint)
    qg = reference.quantize(model, calib_images, "configs/recipes/static_w8a8.yaml")   # -> QuantizedGraph
    qg.save("model.npz"); QuantizedGraph.load("model.npz")
    reference.FakeQuantExecutor(qg).run(images)     # -> RunResult (= reference.fakequant_ops.GraphFakeQuantExecutor)
    graph = reference.lower(model)                  # the typed float graph (simulator.ir.Graph)
    reference.float_forward(graph, images, torch.float64)   # its float function, == timm's forward
    reference.quantize_graph                        # the same function as reference.quantize
"""

from __future__ import annotations

from reference.recipes.config import RecipeConfig, load_recipe

__all__ = ["load_model", "quantize", "FakeQuantExecutor", "RecipeConfig", "load_recipe", "load_dataset",
           "load_digits", "lower", "float_forward", "quantize_graph"]


def __getattr__(name):
    # torch, timm and numba load on first use, so that validating a recipe stays light
    if name == "FakeQuantExecutor":
        from reference.fakequant_ops import GraphFakeQuantExecutor
        return GraphFakeQuantExecutor
    if name in ("quantize", "quantize_graph"):
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
    if name == "float_forward":
        from reference.float_ops import float_forward
        return float_forward
    raise AttributeError(name)
