"""Per-tensor error of a quantized graph against its float model: SQNR in dB by depth.

`boundary_sqnr(qg, images)` runs the float walk (`reference.float_ops`,
float64, the graph's own float params: timm's function) and the integer
executor on the same images and returns, for every tensor that holds
integers, ``SQNR = 10 log10(sum x_f^2 / sum (x_q - x_f)^2)`` over all
elements of all images, with ``x_q`` the simulator's codes turned back into
real values (`dequantize`). Rows are in walk order (``depth`` = index of the
producing op), with the block index parsed from the tensor name.

Real values per quantizer kind: ``static`` / ``accumulator`` /
``fixed_point``: ``q * scale`` (scale per channel on the last axis where it
is a vector: qkv outputs, O-2SF LayerNorm outputs); ``two_scaled``: the
decoded operand (`simulator.two_scaled.v2sf_decode`) times the fine scale;
``grouped``: ``q * scale * 2**-exps[g]`` with the recorded group map;
``predicted``: no row (the per-image scale is not in the codes).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from reference.float_ops import FloatOps
from simulator.qgraph import QuantizedGraph, Quantizer
from simulator.two_scaled import v2sf_decode
from simulator.walk import walk

__all__ = ["dequantize", "boundary_sqnr", "sqnr_db", "SqnrAccumulator"]

_BLOCK = re.compile(r"^(?:blocks|exits)\.(\d+)\.")


def sqnr_db(x: np.ndarray, ref: np.ndarray) -> float:
    """``10 log10(sum ref^2 / sum (x - ref)^2)`` in float64; inf when equal, -inf for a zero reference."""
    ref, x = np.asarray(ref, np.float64), np.asarray(x, np.float64)
    err, sig = float(((x - ref) ** 2).sum()), float((ref ** 2).sum())
    if err == 0:
        return float("inf")
    return float(10 * np.log10(sig / err)) if sig > 0 else float("-inf")


def dequantize(qz: Quantizer, codes: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray | None:
    """Real values of a tensor's codes (see the module docstring); None for ``predicted``."""
    codes = np.asarray(codes, np.int64)
    scale = np.asarray(qz.scale, np.float64)
    if qz.kind in ("static", "accumulator", "fixed_point"):
        return codes * scale
    if qz.kind == "two_scaled":
        return v2sf_decode(codes, qz.bits, qz.ratio_shift, int(qz.signed)) * scale
    if qz.kind == "grouped" and groups is not None:
        exps = np.asarray(qz.exps, np.float64)[np.asarray(groups, np.int64)]
        if codes.ndim == exps.ndim:    # pooled rows [B, C]: one group per channel
            return codes * scale * 2.0 ** -exps
        if qz.rows:                    # softmax rows [B, H, T]: one group per row over the last axis
            return codes * scale * 2.0 ** -exps[..., None]
        return codes * scale * 2.0 ** -exps[..., None, :]   # channel groups [.., C] over the tokens
    return None


class SqnrAccumulator:
    """Signal and error energies of every quantized tensor, summed batch by batch.

    ``add(images, codes)`` runs the float walk on one batch and adds
    ``sum x_f^2`` and ``sum (x_q - x_f)^2`` per tensor; `rows` turns the sums
    into SQNR rows. Memory is one batch of float tensors, so a sweep can
    report SQNR over all its images without holding them (the float64 sums
    do not depend on how the images were batched beyond rounding).
    """

    def __init__(self, qg: QuantizedGraph):
        if any(op.kind == "exit" for op in qg.graph.ops):
            raise ValueError("boundary_sqnr: graphs with early exits compare images that left as zeros; "
                             "not supported")
        self.qg = qg
        self._ops = FloatOps(qg.graph, torch.float64)
        self._names: list[str] | None = None
        self._sums: dict[str, list[float]] = {}

    @torch.no_grad()
    def add(self, images: np.ndarray, codes: dict) -> None:
        qg = self.qg
        if self._names is None:
            self._names = [t for t in qg.graph.tensor_names()[1:] if t in codes and t in qg.quantizers]
        wanted, ref = set(self._names), {}

        def keep(name, t):
            if name in wanted:
                ref[name] = t.numpy()

        walk(qg.graph, self._ops, torch.as_tensor(np.asarray(images)), keep)
        for t in self._names:
            x = dequantize(qg.quantizers[t], codes[t], codes.get(t + ".groups"))
            if x is None or t not in ref:
                continue
            r = np.asarray(ref[t], np.float64)
            sums = self._sums.setdefault(t, [0.0, 0.0])
            sums[0] += float((r ** 2).sum())
            sums[1] += float(((x - r) ** 2).sum())

    def rows(self) -> list[dict]:
        """One row per quantized tensor in walk order: ``tensor, op, op_kind, quantizer, bits, depth,
        block, sqnr_db`` (inf when the codes equal the float values)."""
        prod = self.qg.graph.producers()
        order = {op.name: i for i, op in enumerate(self.qg.graph.ops)}
        rows = []
        for t in self._names or ():
            if t not in self._sums:
                continue
            sig, err = self._sums[t]
            qz, op = self.qg.quantizers[t], prod[t]
            m = _BLOCK.match(t)
            db = float("inf") if err == 0 else (float(10 * np.log10(sig / err)) if sig > 0 else float("-inf"))
            rows.append({"tensor": t, "op": op.name, "op_kind": op.kind, "quantizer": qz.kind, "bits": int(qz.bits),
                         "depth": order[op.name], "block": int(m.group(1)) if m else None, "sqnr_db": db})
        return rows


def boundary_sqnr(qg: QuantizedGraph, images: np.ndarray, codes: dict | None = None,
                  batch_size: int = 64) -> list[dict]:
    """One row per quantized tensor in walk order: ``tensor, op, op_kind, quantizer, bits, depth, block,
    sqnr_db`` (the simulator's run on ``images``, or its ``codes`` if given, against the float walk)."""
    acc = SqnrAccumulator(qg)
    if codes is None:
        from simulator.int_ops import GraphIntegerExecutor
        codes = GraphIntegerExecutor(qg).run(images, batch_size).codes
    for s in range(0, len(images), batch_size):
        acc.add(images[s:s + batch_size], {k: v[s:s + batch_size] for k, v in codes.items()})
    return acc.rows()
