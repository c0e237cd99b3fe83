"""The one forward pass: interpret a `simulator.ir.Graph` with an op set.

An op set is any object with one method per op kind (``patchify``,
``linear``, ``layer_norm``, ... -- see `simulator.ir`), called as
``opset.<kind>(op, *input_arrays)`` and returning the op's output array, or
a tuple of arrays when the op has several outputs. The op set owns the
parameters (float weights, integer codes and multipliers); the walk only
routes tensors. It never imports torch: arrays are whatever the op set uses.

``keep(name, array)`` is called on the graph input and on every produced
tensor, in execution order; calibration collects boundary statistics and
executors record codes through it. A tensor is released after its last
reader unless it is a graph output.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from simulator.ir import Graph, GraphError

__all__ = ["walk", "last_reads"]


def last_reads(graph: Graph) -> dict[str, int]:
    """Tensor name -> index of the last op that reads it."""
    last: dict[str, int] = {}
    for i, op in enumerate(graph.ops):
        for t in op.inputs:
            last[t] = i
    return last


def _as_tuple(result, op) -> tuple:
    out = result if isinstance(result, tuple) else (result,)
    if len(out) != len(op.outputs):
        raise GraphError(f"{op.name}: op set returned {len(out)} arrays for {len(op.outputs)} outputs")
    return out


def walk(graph: Graph, opset: Any, inputs: Any, keep: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """Run ``graph`` on ``inputs`` (the input array, or a mapping holding it
    under ``graph.input``); return ``{output name: array}``."""
    x = inputs[graph.input] if isinstance(inputs, Mapping) else inputs
    env = {graph.input: x}
    if keep is not None:
        keep(graph.input, x)
    last = last_reads(graph)
    wanted = set(graph.outputs)
    for i, op in enumerate(graph.ops):
        kernel = getattr(opset, op.kind, None)
        if kernel is None:
            raise GraphError(f"{op.name}: op set {type(opset).__name__} has no {op.kind!r} kernel")
        results = _as_tuple(kernel(op, *(env[t] for t in op.inputs)), op)
        for name, arr in zip(op.outputs, results):
            env[name] = arr
            if keep is not None:
                keep(name, arr)
        for t in set(op.inputs):
            if last[t] == i and t not in wanted:
                del env[t]
    return {name: env[name] for name in graph.outputs}
