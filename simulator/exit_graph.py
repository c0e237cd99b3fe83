"""Early exits in the integer graph: their trace records and the per-image ran mask.

An exit ``j`` after block ``a`` adds three operators right after that block's
last one: ``exits.j.norm`` (integer LayerNorm of the class token),
``exits.j.head`` (linear -> logit codes) and ``exits.j.confidence`` (integer
softmax of the logit codes; its max code is compared with the threshold code,
a comparison the cost model does not charge). ``exit_depth`` of an image is
the number of blocks it executed (``depth`` when it reached the final head).
"""

from __future__ import annotations

import numpy as np

from simulator.trace import LayerRecord

__all__ = ["exit_records", "layer_ran_from_depth", "never_exit_code", "ExitTracker", "finish_trace"]


def never_exit_code(conf_bits: int) -> int:
    """A threshold code no confidence code reaches (the exit is computed but never taken)."""
    return 1 << conf_bits


def exit_records(q, block: int) -> list[LayerRecord]:
    """Trace records of the exits placed after ``block`` (none for exit-free models)."""
    recs = []
    for j, e in enumerate(getattr(q, "exits", ())):
        if e.after_block != block:
            continue
        p = f"exits.{j}."
        d = e.norm.gamma_mult.shape[0]
        n, k = e.head.w_q.shape
        recs.append(LayerRecord(name=p + "norm", kind="layernorm", elements=d, rows=1, in_bits=e.norm.in_bits,
                                out_bits=e.norm.out_bits))
        recs.append(LayerRecord(name=p + "head", kind="linear", m=1, k=k, n=n, a_bits=e.head.in_bits,
                                b_bits=e.head.w_bits, b_is_weight=True, in_bits=e.head.in_bits,
                                out_bits=e.head.out_bits, weight_bytes=(n * k * e.head.w_bits + 7) // 8 + 4 * n))
        recs.append(LayerRecord(name=p + "confidence", kind="softmax", elements=n, rows=1, in_bits=e.head.out_bits,
                                out_bits=e.confidence.out_bits))
    return recs


def layer_ran_from_depth(layers: list[LayerRecord], exit_depth: np.ndarray, q) -> np.ndarray:
    """Bool [n_images, n_layers]: which layers each image executed, given its exit depth."""
    depth = len(q.blocks)
    exit_depth = np.asarray(exit_depth, dtype=np.int64)
    cols = []
    for rec in layers:
        parts = rec.name.split(".")
        if parts[0] == "blocks":
            cols.append(exit_depth > int(parts[1]))
        elif parts[0] == "exits":
            cols.append(exit_depth > q.exits[int(parts[1])].after_block)
        elif rec.name in ("norm", "head"):
            cols.append(exit_depth == depth)
        else:
            cols.append(np.ones(len(exit_depth), dtype=bool))
    return np.stack(cols, axis=1) if cols else np.zeros((len(exit_depth), 0), dtype=bool)


def _zeros(like, shape):
    """Zeros of ``like``'s array type and dtype (numpy array or torch tensor, duck-typed)."""
    return like.new_zeros(shape) if hasattr(like, "new_zeros") else np.zeros(shape, dtype=like.dtype)


class ExitTracker:
    """Which images of one batch are still running, shared by both executors.

    Images that exit stop running; the batch continues with the others. Codes
    of a boundary an image did not reach are stored as 0 (``layer_ran`` and
    ``exit_depth`` say which entries are real). When every image has left,
    the remaining operators run on one discarded dummy row so every boundary
    keeps its shape; overflows counted from then on are dropped (`finish`).
    """

    def __init__(self, q, n: int):
        self.q, self.n = q, n
        self.active = np.arange(n)
        self.depth = np.full(n, len(q.blocks), dtype=np.int64)
        self.exit_logits = np.zeros((n, q.head.w_q.shape[0]), dtype=np.int64)
        self.dummy = False
        self._overflows = None

    def scatter(self, arr):
        """Rows of the running images -> a full-batch array (0 for the others)."""
        if not self.dummy and len(self.active) == self.n:
            return arr
        out = _zeros(arr, (self.n, *arr.shape[1:]))
        if not self.dummy:
            out[self.active] = arr
        return out

    def wrap(self, keep):
        return lambda name, arr: keep(name, self.scatter(arr))

    def exits_after(self, block: int):
        """``(j, exit)`` pairs placed after ``block``."""
        return [(j, e) for j, e in enumerate(self.q.exits) if e.after_block == block]

    def leave(self, exit_head, leave, logit_codes, x, overflows: dict):
        """Record the images with ``leave`` True as exited here; return ``x`` of the others."""
        if self.dummy:
            return x
        leave = np.asarray(leave, dtype=bool).reshape(-1)
        gone = self.active[leave]
        self.exit_logits[gone] = np.asarray(logit_codes, dtype=np.int64)[leave]
        self.depth[gone] = exit_head.after_block + 1
        stay = np.flatnonzero(~leave)
        self.active = self.active[stay]
        if len(stay) == 0:
            self.dummy, self._overflows = True, dict(overflows)
            return x[:1]
        return x[stay] if len(stay) < len(leave) else x

    def output(self, logit_codes):
        """Full-batch logit codes: the final head's for running images, the exits' for the others."""
        out = self.scatter(logit_codes)
        exited = np.flatnonzero(self.depth < len(self.q.blocks))
        if len(exited):
            out[exited] = out.new_tensor(self.exit_logits[exited]) if hasattr(out, "new_tensor") \
                else self.exit_logits[exited].astype(out.dtype)
        return out

    def finish(self, overflows: dict) -> None:
        """Drop overflows counted on the dummy row (restores the counts of when it started)."""
        if self._overflows is not None:
            overflows.clear()
            overflows.update(self._overflows)


def finish_trace(q, trace, exit_depth: np.ndarray) -> np.ndarray:
    """Set ``layer_ran`` and ``extras["exit_depth"]`` on an exit model's trace; per-image logit scale."""
    if not q.exits:
        return np.full(len(exit_depth), q.logit_scale)
    trace.layer_ran = layer_ran_from_depth(trace.layers, exit_depth, q)
    trace.extras["exit_depth"] = np.asarray(exit_depth, dtype=np.int64)
    scale = np.full(len(exit_depth), q.logit_scale)
    for e in q.exits:
        scale[exit_depth == e.after_block + 1] = e.logit_scale
    return scale
