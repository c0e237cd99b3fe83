"""The bundled digits model with a recipe's three executors: the setup of the evaluation tests."""

from __future__ import annotations



def digits_setup(recipe: str, limit: int):
    """(bundled model, the first ``limit`` digits test images, their labels, the (fake-quant integer-only,
    fake-quant float-nonlinear, simulator) executors of ``recipe`` calibrated on the digits calib split)."""
    import reference
    from simulator.engines import graph_executors

    model = reference.load_model()
    calib, _ = reference.load_dataset("digits", model, "calib")
    images, labels = reference.load_dataset("digits", model, "test", limit=limit)
    return model, images, labels, graph_executors(reference.quantize(model, calib, recipe), "auto")
