"""Exact integer profiles of APQ candidate models, block by block (`reference.recipes.apq_graph_search`).

A candidate of the APQ search is the static graph with exits whose block
``i`` comes from width variant ``choice[i]`` (`apq_graph.Candidates`). The
search asks, for many choices and thresholds, where each image leaves and
what it predicts. Running every candidate model over every calibration image
(the old driver: one integer-simulator pass per distinct choice, every exit
computed) repeats most of the work: two choices that agree on blocks
``0..i`` compute the same residual stream up to block ``i``, and an image
that leaves at an exit never needs the blocks after it.

`BlockProfiles` cuts the graph with exits into segments -- the stem (patch
embedding .. ``x0``), one segment per block (with the exits after it) and
the tail (final norm, head) -- each reading one tensor and writing one, and
runs a segment with the integer op set of the block's width variant
(`simulator.int_ops.IntOps` on that variant's frozen graph; the stem, the
exits and the tail are the same in every variant). Outputs are cached per
*prefix* of the choice (``choice[:i + 1]`` -> the residual codes after block
``i``, the exits there) and per image, and computed only for the images
asked for. `outcome` then follows each image as the exit model runs it:
through the blocks until an exit's confidence code reaches the threshold
code, so the cost is the executed depth of the images asked for, once per
distinct prefix. Integer ops are exact per image (no cross-image state, any
batch split), so every code equals a whole-graph run
(`simulator.int_ops.GraphIntegerExecutor`) -- tested.

`supported` says whether a graph cuts this way (one residual tensor between
consecutive segments, blocks contiguous); the search falls back to whole
runs otherwise.
"""

from __future__ import annotations

import re

import numpy as np

from simulator import ir
from simulator.int_ops import IntOps
from simulator.walk import walk

__all__ = ["BlockProfiles", "segments", "supported"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_BATCH_ELEMENTS = 1 << 24       # images per segment run: the widest tensor of a batch stays under this


def segments(graph: ir.Graph, depth: int) -> list[tuple[str, int, tuple]] | None:
    """``[("stem", -1, ops), ("block", 0, ops), ..., ("tail", depth, ops)]`` (exit ops in the segment of
    the block they follow), or None when the ops are not in that order."""
    segs: list[tuple[str, int, list]] = [("stem", -1, [])]
    for op in graph.ops:
        m = _BLOCK.match(op.name)
        if m:
            i = int(m.group(1))
            if segs[-1][0] != "block" or segs[-1][1] != i:
                if i != (segs[-1][1] + 1 if segs[-1][0] == "block" else 0) or segs[-1][0] == "tail":
                    return None
                segs.append(("block", i, []))
        elif op.name.startswith("exits."):
            if segs[-1][0] != "block":
                return None
        elif segs[-1][0] == "block":
            segs.append(("tail", depth, []))
        segs[-1][2].append(op)
    if len(segs) != depth + 2 or segs[-1][0] != "tail":
        return None
    return [(k, i, tuple(ops)) for k, i, ops in segs]


def _wiring(graph: ir.Graph, segs) -> list[tuple[str, str]] | None:
    """``(input, output)`` tensor of each segment, or None unless each reads and passes on exactly one."""
    where = {t: s for s, (_, _, ops) in enumerate(segs) for op in ops for t in op.outputs}
    where[graph.input] = -1
    out = []
    for s, (_, _, ops) in enumerate(segs):
        made = {t for op in ops for t in op.outputs}
        ins = {t for op in ops for t in op.inputs if t not in made}
        later = {t for _, _, o2 in segs[s + 1:] for op in o2 for t in op.inputs} | set(graph.outputs)
        outs = [t for t in made if t in later and not t.startswith("exits.")]
        if len(ins) != 1 or len(outs) != 1 or where[next(iter(ins))] != s - 1:
            return None
        out.append((next(iter(ins)), outs[0]))
    return out


def supported(graph: ir.Graph, depth: int) -> bool:
    segs = segments(graph, depth)
    return segs is not None and _wiring(graph, segs) is not None


class _Cache:
    """One array per name over all images, filled row by row (``done``)."""

    def __init__(self, n: int):
        self.n, self.arrays, self.done = n, {}, np.zeros(n, dtype=bool)

    def missing(self, rows: np.ndarray) -> np.ndarray:
        return rows[~self.done[rows]]

    def store(self, rows: np.ndarray, values: dict) -> None:
        for k, v in values.items():
            if k not in self.arrays:
                self.arrays[k] = np.zeros((self.n, *v.shape[1:]), dtype=v.dtype)
            self.arrays[k][rows] = v
        self.done[rows] = True


class BlockProfiles:
    """Exit confidences, exit and final predictions of APQ candidates (module docstring)."""

    def __init__(self, cands, images: np.ndarray, batch_size: int | None = None):
        g = cands.egraph
        if batch_size is None:          # few images per call cost more in dispatch than in arithmetic
            widest = max(int(np.prod(s[1:])) for s in ir.tensor_shapes(g).values())
            batch_size = int(np.clip(_BATCH_ELEMENTS // max(widest, 1), 64, 512))
        self.c, self.images, self.batch = cands, np.asarray(images), batch_size
        segs = segments(g, cands.depth)
        wiring = None if segs is None else _wiring(g, segs)
        if wiring is None:
            raise ValueError("BlockProfiles: the graph does not cut into stem / blocks / tail (see supported())")
        self.segs = [ir.Graph(ops=ops, input=i, outputs=(o,), params=g.params, image_size=g.image_size,
                              in_chans=g.in_chans) for (_, _, ops), (i, o) in zip(segs, wiring)]
        self.exits = [[o.name.rsplit(".", 1)[0] for o in ops if o.kind == "exit"] for _, _, ops in segs]
        self._ops: dict[int, IntOps] = {}
        self._cache: dict[tuple, _Cache] = {}
        self.segments_run = 0           # segment x image evaluations, for the report
        self.choices: set[tuple] = set()

    def _opset(self, c: int) -> IntOps:
        if c not in self._ops:
            self._ops[c] = IntOps(self.c.build((c,) * self.c.depth))
        return self._ops[c]

    def _node(self, key: tuple, rows: np.ndarray) -> _Cache:
        """The cache of segment ``len(key)`` (stem: key ``()``, block i: ``choice[:i + 1]``, tail: the full
        choice + ``("tail",)``), computed for ``rows`` (and its parents for the rows it needs)."""
        node = self._cache.setdefault(key, _Cache(len(self.images)))
        todo = node.missing(np.asarray(rows, dtype=np.int64))
        if len(todo) == 0:
            return node
        s = len(key) if key[-1:] != ("tail",) else self.c.depth + 1
        if s == 0:
            seg_in, opset = self.images[todo], self._opset(0)
        else:
            parent = key[:-1]
            seg_in = self._node(parent, todo).arrays["out"][todo]
            opset = self._opset(key[-1] if s <= self.c.depth else 0)
        g, names = self.segs[s], self.exits[s]
        outs: dict[str, list] = {}

        def keep(name, arr):
            for e in names:
                if name == e + ".confidence":
                    outs.setdefault(e + ".conf", []).append(np.asarray(arr)[:, 0].astype(np.int64))
                elif name == e + ".logits":
                    outs.setdefault(e + ".pred", []).append(np.asarray(arr).argmax(-1).astype(np.int64))

        res = []
        for b in range(0, len(todo), self.batch):
            res.append(walk(g, opset, seg_in[b:b + self.batch], keep if names else None)[g.outputs[0]])
        self.segments_run += len(todo)
        node.store(todo, {"out": np.concatenate(res), **{k: np.concatenate(v) for k, v in outs.items()}})
        return node

    def residual(self, prefix: tuple, rows) -> np.ndarray:
        """Codes of the tensor after the stem (``prefix == ()``) or after block ``len(prefix) - 1`` with
        blocks ``0..`` at widths ``prefix``, for ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._node(tuple(prefix), rows).arrays["out"][rows]

    def final_logit_codes(self, choice: tuple, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        self.choices.add(tuple(choice))
        return self._node(tuple(choice) + ("tail",), rows).arrays["out"][rows]

    def outcome(self, choice: tuple, code: int, rows, final: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(prediction, first exit)`` of ``rows`` under the exit model ``choice`` with every exit at
        threshold code ``code`` (first exit ``E`` = full depth; as `reference.exits.apply_thresholds`).
        ``final=False``: images that pass every exit are not run to the end (prediction -1)."""
        choice = tuple(choice)
        self.choices.add(choice)
        rows = np.asarray(rows, dtype=np.int64)
        pred = np.full(len(rows), -1, dtype=np.int64)
        n_exits = sum(len(e) for e in self.exits)
        first = np.full(len(rows), n_exits, dtype=np.int64)
        running, j = np.arange(len(rows)), 0
        for s in range(1, self.c.depth + 1):
            if not len(running) or (j == n_exits and not final):
                break
            node = self._node(choice[:s], rows[running])
            for e in self.exits[s]:
                leave = node.arrays[e + ".conf"][rows[running]] >= code
                pred[running[leave]] = node.arrays[e + ".pred"][rows[running[leave]]]
                first[running[leave]] = j
                running, j = running[~leave], j + 1
        if final and len(running):
            pred[running] = self.final_logit_codes(choice, rows[running]).argmax(-1)
        return pred, first
