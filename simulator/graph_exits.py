"""Early exits on the integer graph (APQ/MAQEE): the rewrite that inserts them,
their frozen params, and what an executor records when images leave.

An exit ``j`` after block ``a`` is four ops placed right after the op that
writes ``blocks.{a}.x_out`` (BranchyNet-style side classifier on the
residual stream, ../shared/seeds/003):

* ``exits.{j}.pool``: the model's own pooling (class token, or the average
  of the patch tokens), a view of the residual codes;
* ``exits.{j}.norm``: LayerNorm (integer, I-BERT style, like every norm);
* ``exits.{j}.head`` -> tensor ``exits.{j}.logits``: the exit's classifier;
* ``exits.{j}.confidence`` (`simulator.ir.Exit`): ``conf = max_c
  softmax_q(logits)_c`` (the integer softmax of the logit codes, unsigned
  codes at ``2**-b``); an image leaves when ``conf >= threshold_q`` with
  ``threshold_q = ceil(tau 2**b)`` (`ExitQ`). Its logits become its output
  and the walk (`simulator.walk`) runs the rest of the graph on the others.

``exit_depth`` of an image is the number of blocks it executed (the depth
of the model when it reached the final head); ``layer_ran`` says which
trace records it executed: those of the ops up to the exit it took.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from simulator import ir
from simulator.qvit import SoftmaxQ

__all__ = ["never_exit_code", "ExitQ", "add_exits", "graph_depth", "exit_ops", "ExitRecorder"]


def never_exit_code(conf_bits: int) -> int:
    """A threshold code no confidence code reaches (the exit is computed but never taken)."""
    return 1 << conf_bits


@dataclass(frozen=True)
class ExitQ:
    """Frozen exit decision: the integer softmax of the logit codes, and ``threshold_q``
    (``2**out_bits`` never exits: the top confidence code is ``2**out_bits - 1``)."""
    confidence: SoftmaxQ
    threshold_q: int


def graph_depth(graph: ir.Graph) -> int:
    """Number of blocks of a lowered graph (``blocks.{i}.*`` op names)."""
    ids = [int(m.group(1)) for o in graph.ops if (m := re.match(r"blocks\.(\d+)\.", o.name))]
    return max(ids) + 1 if ids else 0


def exit_ops(graph: ir.Graph) -> list[ir.Exit]:
    return [o for o in graph.ops if o.kind == "exit"]


def add_exits(graph: ir.Graph, after_blocks, heads, thresholds) -> ir.Graph:
    """``graph`` with an exit after each block of ``after_blocks`` (increasing, not the last block).

    ``heads[j]``: float params ``{"norm_weight", "norm_bias", "eps", "head_weight", "head_bias"}`` of exit
    ``j`` (numpy); ``thresholds[j]``: its confidence threshold ``tau`` (1 = never exits)."""
    after = [int(a) for a in after_blocks]
    depth = graph_depth(graph)
    if after != sorted(set(after)) or any(not 0 <= a < depth - 1 for a in after):
        raise ir.GraphError(f"exits after blocks {after}: expected increasing blocks in [0, {depth - 2}]")
    if not (len(heads) == len(thresholds) == len(after)):
        raise ir.GraphError(f"exits: {len(after)} blocks, {len(heads)} heads, {len(thresholds)} thresholds")
    pools = [o for o in graph.ops if o.kind == "pool"]
    if not pools:
        raise ir.GraphError("exits: the graph has no pooling op to copy for the exit heads")
    pool = pools[0]
    prod = graph.producers()
    at = {}
    for j, a in enumerate(after):
        x = f"blocks.{a}.x_out"
        if x not in prod:
            raise ir.GraphError(f"exits: no tensor {x!r} to place exit {j} after")
        at.setdefault(prod[x].name, []).append((j, a, x))
    ops, params = [], {k: dict(v) for k, v in graph.params.items()}
    for op in graph.ops:
        ops.append(op)
        for j, a, x in at.get(op.name, ()):
            p, h = f"exits.{j}.", heads[j]
            ops += [ir.Pool(p + "pool", (x,), (p + "pool",), mode=pool.mode, index=pool.index,
                            num_prefix_tokens=pool.num_prefix_tokens),
                    ir.LayerNorm(p + "norm", (p + "pool",), (p + "norm",), eps=float(h["eps"])),
                    ir.Head(p + "head", (p + "norm",), (p + "logits",)),
                    ir.Exit(p + "confidence", (p + "logits",), (p + "confidence",),
                            threshold=float(thresholds[j]), after_block=a)]
            params[p + "norm"] = {"weight": _ro(h["norm_weight"]), "bias": _ro(h["norm_bias"])}
            params[p + "head"] = {"weight": _ro(h["head_weight"]), "bias": _ro(h["head_bias"])}
    return ir.Graph(ops=tuple(ops), input=graph.input, outputs=graph.outputs, params=params,
                    image_size=graph.image_size, in_chans=graph.in_chans)


def _group_map_shapes(qg) -> dict[str, tuple[int, tuple]]:
    """Tensor -> (index of its producer, per-image shape of its group map) for every tensor with an
    IGQ group map (`simulator.igq_graph`): channels ``[..., C]`` (over the tokens), rows ``[..., R]``."""
    from simulator.igq_graph import GROUPED_PRODUCERS
    g = qg.graph
    shapes, index = ir.tensor_shapes(g, batch=1), {}
    for i, op in enumerate(g.ops):
        for t in op.outputs:
            qz = qg.quantizers.get(t)
            if qz is not None and qz.kind == "grouped" and op.kind in GROUPED_PRODUCERS + ("merge_heads",):
                s = shapes[t][1:]
                index[t] = (i, s[:-1] if qz.rows else s[:-2] + s[-1:])
    return index


def _ro(a) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


class ExitRecorder:
    """Per image of one run: the exit it took (``on_leave`` of `simulator.walk.walk`), then
    ``exit_depth``, the per-image output scale and ``layer_ran`` for the trace."""

    def __init__(self, qg, n: int):
        self.qg, self.n = qg, n
        g = qg.graph
        self.depth = graph_depth(g)
        self.exit_depth = np.full(n, self.depth, dtype=np.int64)
        self.left_at = np.full(n, len(g.ops), dtype=np.int64)    # index of the op each image left at
        self.scale = np.full(n, qg.output_scale())
        self._index = {o.name: i for i, o in enumerate(g.ops)}
        self.has_exits = bool(exit_ops(g))
        self._maps = _group_map_shapes(qg) if self.has_exits else {}

    def at(self, offset: int):
        """``on_leave`` for the batch starting at image ``offset``."""
        def on_leave(op, rows):
            rows = np.asarray(rows) + offset
            self.exit_depth[rows] = op.after_block + 1
            self.left_at[rows] = self._index[op.name]
            self.scale[rows] = float(np.asarray(self.qg.quantizers[op.inputs[0]].scale))
        return on_leave

    def group_maps(self, groups: dict, offset: int, n: int) -> dict:
        """The IGQ group maps of the batch of ``n`` images at ``offset`` (``groups``: the op set's, rows of
        the images that ran each producer) as full-batch arrays: 0 in the rows of images that left
        before the producer, all 0 when none reached it (as the walk keeps codes). No exits: ``groups``."""
        if not self.has_exits:
            return dict(groups)
        left, out = self.left_at[offset:offset + n], {}
        for t, (i, shape) in self._maps.items():
            full = np.zeros((n, *shape), dtype=np.int64)
            if t in groups:
                full[left > i] = np.asarray(groups[t])
            out[t] = full
        return out

    def finish(self, trace, layer_ops: list[int], logit_codes: np.ndarray) -> np.ndarray:
        """Set ``layer_ran`` / ``extras["exit_depth"]`` on an exit model's trace; return the real logits."""
        if self.has_exits:
            trace.layer_ran = np.asarray(layer_ops, dtype=np.int64)[None, :] <= self.left_at[:, None]
            trace.extras["exit_depth"] = self.exit_depth.copy()
        return logit_codes * self.scale[:, None]
