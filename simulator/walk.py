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

**Images leaving the batch** (early exits). An op may return `Leave(outputs,
leave)`: its outputs as usual plus a bool per *running* row. Rows with True
stop there: their graph output is that op's first input (an exit's logits),
``on_leave(op, rows)`` is told their batch indices, and every live tensor
is cut to the remaining rows, so the ops that follow run on the others only.
``keep`` still receives full-batch arrays, 0 in the rows of images that did
not reach the tensor; graph outputs are kept once at the end, merged (the
final head's rows for the images that stayed, the exits' for the others).
When every image has left, the remaining ops do not run: their tensors are
kept as zeros of their shapes (`Op.out_shapes` from the input's shape).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from simulator.ir import Graph, GraphError

__all__ = ["walk", "last_reads", "Leave"]


class Leave:
    """An op's result that takes rows out of the batch (see the module docstring)."""
    __slots__ = ("outputs", "leave")

    def __init__(self, outputs, leave):
        self.outputs = outputs
        self.leave = np.asarray(leave, dtype=bool).reshape(-1)


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


def _shapes(graph: Graph, input_shape) -> dict[str, tuple]:
    """Every tensor's shape, propagated from the input's."""
    shapes = {graph.input: tuple(input_shape)}
    for o in graph.ops:
        shapes.update(zip(o.outputs, o.out_shapes(graph.params.get(o.name, {}), *(shapes[t] for t in o.inputs))))
    return shapes


def _zeros(like, shape):
    """Zeros of ``like``'s array type and dtype (numpy array or torch tensor, duck-typed)."""
    return like.new_zeros(shape) if hasattr(like, "new_zeros") else np.zeros(shape, dtype=like.dtype)


def _widest(a, b):
    """``a`` as the wider of the two arrays' dtypes (integer codes of an exit head and of the final
    head may be held in different widths; widening keeps every value)."""
    if a.dtype == b.dtype:
        return a
    if hasattr(a, "long"):             # torch codes (duck-typed: the walk does not import torch): int64
        return a.long()
    return a.astype(np.promote_types(a.dtype, b.dtype))


class _Batch:
    """Which rows of the batch are still running, and the outputs of those that left."""

    def __init__(self, n: int):
        self.n, self.active = n, np.arange(n)
        self.left: list[tuple[np.ndarray, Any]] = []    # (rows, output rows) per departure

    @property
    def full(self) -> bool:
        return len(self.active) == self.n

    def scatter(self, arr):
        """Rows of the running images -> a full-batch array (0 for the others)."""
        if self.full:
            return arr
        out = _zeros(arr, (self.n, *arr.shape[1:]))
        if len(self.active):
            out[self.active] = arr
        return out

    def output(self, arr, shape):
        """The graph output: running rows from ``arr`` (None: nobody ran), departed ones from their exits."""
        if arr is None:
            last = self.left[-1][1]
            out = _zeros(last, (self.n, *shape[1:]))
        else:
            out = self.scatter(arr)
        for _, vals in self.left:
            out = _widest(out, vals)
        for rows, vals in self.left:
            out[rows] = _widest(vals, out)
        return out


def walk(graph: Graph, opset: Any, inputs: Any, keep: Callable[[str, Any], None] | None = None,
         on_leave: Callable[[Any, np.ndarray], None] | None = None) -> dict[str, Any]:
    """Run ``graph`` on ``inputs`` (the input array, or a mapping holding it
    under ``graph.input``); return ``{output name: array}`` (full batch)."""
    x = inputs[graph.input] if isinstance(inputs, Mapping) else inputs
    env = {graph.input: x}
    if keep is not None:
        keep(graph.input, x)
    last = last_reads(graph)
    wanted = set(graph.outputs)
    batch = _Batch(len(x))
    shapes = None
    for i, op in enumerate(graph.ops):
        if not len(batch.active):      # everyone has left: what follows is not computed
            if keep is not None:
                shapes = shapes or _shapes(graph, x.shape)
                for name in op.outputs:
                    if name not in wanted:
                        keep(name, _zeros(batch.left[-1][1], shapes[name]))
            continue
        kernel = getattr(opset, op.kind, None)
        if kernel is None:
            raise GraphError(f"{op.name}: op set {type(opset).__name__} has no {op.kind!r} kernel")
        result = kernel(op, *(env[t] for t in op.inputs))
        leave = None
        if isinstance(result, Leave):
            result, leave = result.outputs, result.leave
        for name, arr in zip(op.outputs, _as_tuple(result, op)):
            env[name] = arr
            if keep is not None and name not in wanted:
                keep(name, batch.scatter(arr))
        if leave is not None and leave.any():
            _depart(batch, env, op, leave, on_leave)
        for t in set(op.inputs):
            if last[t] == i and t not in wanted:
                env.pop(t, None)
    if len(batch.active) == 0:
        shapes = shapes or _shapes(graph, x.shape)
    out = {name: batch.output(env.get(name) if len(batch.active) else None,
                              None if shapes is None else shapes[name]) for name in graph.outputs}
    if keep is not None:
        for name, arr in out.items():
            keep(name, arr)
    return out


def _depart(batch: _Batch, env: dict, op, leave: np.ndarray, on_leave) -> None:
    """Rows ``leave`` (of the running ones) stop after ``op``: record their output, cut every live tensor."""
    if len(leave) != len(batch.active):
        raise GraphError(f"{op.name}: leave mask has {len(leave)} rows for {len(batch.active)} running images")
    rows = batch.active[leave]
    batch.left.append((rows, env[op.inputs[0]][leave]))
    if on_leave is not None:
        on_leave(op, rows)
    stay = ~leave
    batch.active = batch.active[stay]
    for t in list(env):
        env[t] = env[t][stay] if len(batch.active) else None
