"""The machinery of lowering: the rule registry, the graph builder and the
per-module bookkeeping that makes sure nothing is dropped silently.

A *rule* lowers one module type: ``rule(ctx, scope, *inputs, **kw)`` emits
ops through ``ctx`` and returns the name of its output tensor. Rules are
looked up by the module's *exact* type: a subclass may override ``forward``
(``VisionTransformerDistilled`` does), so it needs its own rule or it is
refused. Every rule runs inside a `Scope` that records which children and
which direct parameters/buffers it used; when the rule returns, anything
left unused is an error naming its path.

Folding happens in the builder, as peephole rewrites of the op just
emitted: a LayerScale ``y * gamma`` with ``y = W x + b`` rewrites that
linear to ``(gamma[:, None] * W) x + gamma * b``; a residual ``x + y``
whose ``y`` comes from a linear becomes that linear's fused residual input.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from simulator import ir
from simulator.errors import InputError

__all__ = ["LoweringError", "lowering_rule", "refuse", "Scope", "Builder", "registered_types"]


class LoweringError(InputError):
    """A model the graph cannot express; one line naming the module path."""


_RULES: dict[type, Callable] = {}
_REFUSED: dict[type, str] = {}


def lowering_rule(*types: type):
    """Register the decorated function as the lowering rule of ``types``."""
    def register(fn):
        for t in types:
            if t in _RULES:
                raise ValueError(f"two lowering rules for {t.__qualname__}")
            _RULES[t] = fn
        return fn
    return register


def refuse(module_type: type, construct: str) -> None:
    """Name a module type we know and do not lower, for a precise refusal."""
    _REFUSED[module_type] = construct


def registered_types() -> list[type]:
    return sorted(_RULES, key=lambda t: (t.__module__, t.__qualname__))


def _display(path: str) -> str:
    return path or "model"


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy().copy()


class Scope:
    """One module being lowered: its path and what its rule has used."""

    def __init__(self, module: nn.Module, path: str):
        self.module, self.path = module, path
        self._used: set[str] = set()

    def sub(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, what: str, name: str | None = None) -> LoweringError:
        return LoweringError(f"{_display(self.sub(name) if name else self.path)}: {what}")

    def child(self, name: str) -> nn.Module:
        self._used.add(name)
        return getattr(self.module, name)

    def children_of(self, name: str) -> list[tuple[nn.Module, str]]:
        """The items of a ModuleList/Sequential child with their paths."""
        container = self.child(name)
        return [(m, f"{self.sub(name)}.{k}") for k, m in container.named_children()]

    def tensor(self, name: str) -> np.ndarray | None:
        """A direct parameter or buffer as float64 numpy (None if unset)."""
        self._used.add(name)
        t = getattr(self.module, name)
        return None if t is None else to_numpy(t)

    def linear(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(weight [N,K], bias [N]) of an ``nn.Linear`` child; zero bias if none."""
        lin = self.child(name)
        if type(lin) is not nn.Linear:
            raise self.error(f"expected nn.Linear, got {type(lin).__name__}", name)
        w = to_numpy(lin.weight)
        b = to_numpy(lin.bias) if lin.bias is not None else np.zeros(w.shape[0])
        return w, b

    def close(self) -> None:
        m = self.module
        names = [n for n, _ in m.named_children()]
        names += [n for n, p in m.named_parameters(recurse=False) if p is not None]
        names += [n for n, b in m.named_buffers(recurse=False) if b is not None]
        for n in names:
            if n not in self._used:
                raise self.error(f"{type(getattr(m, n)).__name__} is not accounted for by the "
                                 f"{type(m).__name__} lowering rule", n)


class Builder:
    """Collects ops and params; rules call `lower` on children and `emit`."""

    def __init__(self):
        self.ops: list[ir.Op] = []
        self.params: dict[str, dict[str, np.ndarray]] = {}
        self._reads: dict[str, int] = {}
        self._producer: dict[str, int] = {}

    # --- dispatch --------------------------------------------------------------
    def lower_module(self, module: nn.Module, path: str, *inputs, **kw):
        kind = type(module)
        if kind in _REFUSED:
            raise LoweringError(f"{_display(path)}: {_REFUSED[kind]} is not supported")
        rule = _RULES.get(kind)
        if rule is None:
            raise LoweringError(f"{_display(path)}: no lowering rule for {kind.__module__}.{kind.__qualname__}")
        scope = Scope(module, path)
        out = rule(self, scope, *inputs, **kw)
        scope.close()
        return out

    def lower(self, scope: Scope, name: str, *inputs, **kw):
        """Lower child ``name`` of the module in ``scope``."""
        return self.lower_module(scope.child(name), scope.sub(name), *inputs, **kw)

    # --- emitting --------------------------------------------------------------
    def emit(self, op: ir.Op, **params: np.ndarray):
        """Append ``op``; return its output name (a tuple if several)."""
        for t in op.inputs:
            self._reads[t] = self._reads.get(t, 0) + 1
        for t in op.outputs:
            if t in self._producer:
                raise ir.GraphError(f"{op.name}: tensor {t!r} is produced twice")
            self._producer[t] = len(self.ops)
        self.ops.append(op)
        if params:
            self.params[op.name] = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        return op.outputs[0] if len(op.outputs) == 1 else op.outputs

    def _fresh_producer(self, tensor: str) -> int | None:
        """Index of the op producing ``tensor`` if nothing has read it yet."""
        if self._reads.get(tensor, 0):
            return None
        return self._producer.get(tensor)

    def rename(self, tensor: str, new: str) -> str:
        """Give a tensor nobody has read yet its boundary name."""
        if tensor == new:
            return new
        i = self._fresh_producer(tensor)
        if i is None:
            raise ir.GraphError(f"cannot rename {tensor!r}: already read or not produced here")
        op = self.ops[i]
        self.ops[i] = dataclasses.replace(op, outputs=tuple(new if t == tensor else t for t in op.outputs))
        del self._producer[tensor]
        self._producer[new] = i
        return new

    # --- folding ---------------------------------------------------------------
    def _fresh_linear(self, tensor: str) -> int | None:
        i = self._fresh_producer(tensor)
        if i is None or type(self.ops[i]) is not ir.Linear or self.ops[i].residual is not None:
            return None
        return i

    def scale_channels(self, scope: Scope, x: str, gamma: np.ndarray) -> str:
        """``x * gamma`` folded into the linear that produced ``x``."""
        i = self._fresh_linear(x)
        if i is None:
            raise scope.error("LayerScale does not follow a linear layer; it cannot be folded")
        p = self.params[self.ops[i].name]
        p["weight"] = gamma[:, None] * p["weight"]
        p["bias"] = gamma * p["bias"]
        return x

    def residual_add(self, x: str, y: str, out: str, name: str) -> str:
        """``x + y`` named ``out``: fused into y's linear if possible, else an Add op."""
        i = self._fresh_linear(y)
        if i is None:
            return self.emit(ir.Add(name, (x, y), (out,)))
        op = self.ops[i]
        self.ops[i] = dataclasses.replace(op, inputs=(op.inputs[0], x), outputs=(out,))
        self._reads[x] = self._reads.get(x, 0) + 1
        del self._producer[y]
        self._producer[out] = i
        return out

    def graph(self, input: str, outputs: tuple[str, ...], image_size, in_chans: int) -> ir.Graph:
        for ps in self.params.values():
            for arr in ps.values():
                arr.flags.writeable = False       # the graph is frozen, its params too
        return ir.Graph(ops=tuple(self.ops), input=input, outputs=outputs, params=self.params,
                        image_size=tuple(int(v) for v in image_size), in_chans=int(in_chans))
