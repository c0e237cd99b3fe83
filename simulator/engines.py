"""The forward implementation of a run: the integer graph (the only one).

Issue 13 moved every recipe onto one integer graph lowered from the timm
model (`simulator.ir`, `simulator.walk`, `simulator.qgraph`) and removed the
hand-written per-model walks. ``--engine`` stays for scripts that pass it:
``graph`` and ``auto`` both run the graph; ``legacy`` is refused with one
line (exit 2). Part of the CLI's composition root: upstream modules are
imported lazily.
"""

from __future__ import annotations

from simulator.errors import InputError

__all__ = ["ENGINES", "choose_engine", "graph_quantizer", "graph_executors"]

ENGINES = ("auto", "graph")
LEGACY_REMOVED = ("--engine legacy: the hand-written legacy walks were removed (issue 13); "
                  "every recipe runs on the integer graph (--engine graph or auto)")

def choose_engine(requested: str) -> str:
    """``graph`` for ``auto`` / ``graph``; an `InputError` for ``legacy`` (removed) or anything else."""
    if requested == "legacy":
        raise InputError(LEGACY_REMOVED)
    if requested not in ENGINES:
        raise InputError(f"--engine: expected one of {', '.join(ENGINES)}, got {requested!r}")
    return "graph"


def graph_quantizer(recipe: str):
    """The graph calibrator of ``recipe``: ``f(model, calib_images, cfg, model_name=...) -> QuantizedGraph``
    (`reference.recipes.CALIBRATORS`)."""
    from reference.recipes import calibrator

    return calibrator(recipe)


def graph_executors(qgraph, backend: str):
    """(fake-quant integer-only, fake-quant float-nonlinear, integer simulator) over one QuantizedGraph."""
    from reference.fakequant_ops import GraphFakeQuantExecutor
    from simulator.int_ops import GraphIntegerExecutor

    return (GraphFakeQuantExecutor(qgraph, "integer"), GraphFakeQuantExecutor(qgraph, "float"),
            GraphIntegerExecutor(qgraph, gemm_backend=backend))
