"""Trace records of a quantized graph, read off the graph itself.

One `LayerRecord` per op that computes (views and token pooling have none),
per image, with the conventions of `simulator.trace` and the names the old
`simulator.graph.static_layers` uses where the op is the same (op names,
the MLP activation as ``mlp.gelu``). A fused
residual is an ``add`` record ``fused_into`` its linear; the position
embedding an ``add`` fused into the op that starts the embedding chain.
Swin's relative position bias and shifted-window mask are ``add`` records
fused into the ``q k^T`` GEMM (`_window_bias`); its token gathers (window
partition / reverse, patch merging) are address patterns, no record; window
attention is ``matmul`` records with ``batch`` = windows x heads.
Activation functions (erf / tanh GELU, quick-GELU) are all ``gelu`` records:
the hardware models have one activation unit. A ``two_scaled`` output
(TSPTQ V-2SF) adds a ``requantize`` record ``<op prefix>.decode``: the
flag -> shift decode of each word in front of the reading GEMM.

The static recipe's log2 softmax (`simulator.softmax_codes`): the softmax
adds a ``requantize`` record ``<prefix>.log2`` (leading-one position and one
``P*P`` compare per element, on the requant unit), and ``attn @ V`` is a
``shift_matmul`` record with ``a_bits`` = the code width: a shift-accumulate,
not a multiply (`simulator.trace`; costed by hwmodels on the PE array).
"""

from __future__ import annotations

from math import prod

from simulator import ir
from simulator.igq_graph import group_records
from simulator.predicted_graph import predictor_records
from simulator.trace import LayerRecord

__all__ = ["graph_layers", "graph_layer_ops"]


def _rename(name: str) -> str:
    """Op names of the graph -> the trace names `simulator.graph` uses."""
    return name[: -len(".act")] + ".gelu" if name.endswith("mlp.act") else name


def _bits(qz) -> int:
    return qz.bits if qz.kind in ("static", "two_scaled", "grouped", "predicted", "log2") else 32


def _decode(op, elements, rows, qz) -> list[LayerRecord]:
    """V-2SF decode of two-scaled words on the requant unit, one element per word
    (named as `simulator.graph`: ``blocks.i.attn.decode``, ``blocks.i.mlp.decode``)."""
    if qz.kind != "two_scaled":
        return []
    return [LayerRecord(name=op.name.rsplit(".", 1)[0] + ".decode", kind="requantize", elements=elements,
                        rows=rows, in_bits=qz.bits, out_bits=qz.bits)]


def _log2(op, elements, rows, qz) -> list[LayerRecord]:
    """log2 codes of a softmax (`simulator.softmax_codes.log2_code`): one element per code."""
    if qz.kind != "log2":
        return []
    return [LayerRecord(name=op.name.rsplit(".", 1)[0] + ".log2", kind="requantize", elements=elements,
                        rows=rows, in_bits=32, out_bits=qz.bits)]


def _linear(op, lin, x_shape, qg) -> list[LayerRecord]:
    n, k = lin.w_q.shape
    m = prod(x_shape[1:-1]) if len(x_shape) > 2 else 1
    out = qg.quantizers[op.outputs[0]]
    recs = [LayerRecord(name=op.name, kind="linear", m=m, k=k, n=n, a_bits=lin.in_bits, b_bits=lin.w_bits,
                        b_is_weight=True, in_bits=lin.in_bits, out_bits=_bits(out),
                        weight_bytes=(n * k * lin.w_bits + 7) // 8 + 4 * n)]
    if len(op.inputs) == 2:
        recs.append(LayerRecord(name=op.name + ".add", kind="add", elements=m * n, rows=m,
                                in_bits=qg.quantizers[op.inputs[1]].bits, out_bits=_bits(out), fused_into=op.name))
    return recs


def _record(op, ins, outs, qg, producers) -> list[LayerRecord]:
    q = qg.quantizers
    k = op.kind
    out = outs[0] if outs else ()
    rows = prod(out[1:-1]) if len(out) > 2 else 1
    elements = prod(out[1:]) if out else 0
    if k == "patchify":
        return [LayerRecord(name="quantize_input", kind="quantize_input", elements=elements, rows=rows,
                            in_bits=32, out_bits=q[op.outputs[0]].bits)]
    if k in ("linear", "head"):
        return _linear(op, qg.params[op.name], ins[0], qg)
    if k == "layer_norm":
        return [LayerRecord(name=op.name, kind="layernorm", elements=elements, rows=rows,
                            in_bits=_bits(q[op.inputs[0]]), out_bits=_bits(q[op.outputs[0]]))]
    if k == "add_const":
        start = op
        while start.kind in ("add_const", "token_concat") and start.inputs[0] in producers:
            start = producers[start.inputs[0]]
        return [LayerRecord(name=op.name, kind="add", elements=elements, rows=rows, in_bits=q[op.inputs[0]].bits,
                            out_bits=q[op.outputs[0]].bits, fused_into=start.name)]
    if k == "matmul":
        a, b = ins
        kk, n = (b[-1], b[-2]) if op.transpose_b else (b[-2], b[-1])
        qa, qb = q[op.inputs[0]], q[op.inputs[1]]
        kind = "shift_matmul" if qa.kind == "log2" else "matmul"
        return [LayerRecord(name=_rename(op.name), kind=kind, m=a[-2], k=kk, n=n, batch=prod(a[1:-2]),
                            a_bits=qa.bits, b_bits=qb.bits, in_bits=qb.bits, out_bits=_bits(q[op.outputs[0]]))]
    if k in ("softmax", "activation"):
        return [LayerRecord(name=_rename(op.name), kind="softmax" if k == "softmax" else "gelu", elements=elements,
                            rows=rows, in_bits=32, out_bits=q[op.outputs[0]].bits)] + \
            _decode(op, elements, rows, q[op.outputs[0]]) + _log2(op, elements, rows, q[op.outputs[0]])
    if k in ("add", "mean"):
        return [LayerRecord(name=op.name, kind="add", elements=elements * len(op.inputs), rows=rows,
                            in_bits=max(_bits(q[t]) for t in op.inputs), out_bits=_bits(q[op.outputs[0]]))]
    if k == "window_bias":     # Swin: bias (+ mask) added in the q k^T GEMM's output stage
        return _window_bias(op, ins[0], qg, producers)
    if k == "split":     # per-part output stages of the fused in_proj's accumulators
        return [LayerRecord(name=op.name, kind="requantize", elements=prod(ins[0][1:]), rows=prod(ins[0][1:-1]),
                            in_bits=32, out_bits=max(_bits(q[t]) for t in op.outputs))]
    if k == "exit":      # integer softmax of the exit's logits; the max/compare is not charged
        return [LayerRecord(name=op.name, kind="softmax", elements=ins[0][-1], rows=1,
                            in_bits=_bits(q[op.inputs[0]]), out_bits=q[op.outputs[0]].bits)]
    if k == "pool" and op.mode == "avg":
        t = ins[0][1] - op.num_prefix_tokens
        return [LayerRecord(name=op.name, kind="add", elements=t * ins[0][2], rows=1,
                            in_bits=_bits(q[op.inputs[0]]), out_bits=_bits(q[op.outputs[0]]))]
    return []    # views, token concat, token pooling: no arithmetic


def _window_bias(op, scores, qg, producers) -> list[LayerRecord]:
    """The relative position bias codes (int32 ``[H, N, N]``, one table reused by every
    window) and, for a shifted block, the 1-bit mask (``[W, N, N]``) are the extra operands
    of the ``q k^T`` GEMM's output stage: ``add`` records fused into it; both are constants
    stored with the weights."""
    gp = qg.graph.params[op.name]             # shapes (and which blocks mask) from the graph itself
    qk = _rename(producers[op.inputs[0]].name)
    h, n = gp["bias"].shape[:2]
    recs = [LayerRecord(name=op.name, kind="add", elements=h * n * n, rows=h * n, in_bits=32, out_bits=32,
                        weight_bytes=4 * h * n * n, fused_into=qk)]
    if gp["mask"].any():
        w = gp["mask"].shape[0]
        recs.append(LayerRecord(name=op.name + ".mask", kind="add", elements=w * n * n, rows=w * n, in_bits=1,
                                out_bits=32, weight_bytes=(w * n * n + 7) // 8, fused_into=qk))
    return recs


def graph_layers(qg) -> list[LayerRecord]:
    """Every computing op of ``qg`` (a `simulator.qgraph.QuantizedGraph`) in execution order, per image."""
    return [r for r, _ in graph_layer_ops(qg)]


def graph_layer_ops(qg, only=None, shapes=None) -> list[tuple[LayerRecord, int]]:
    """``(record, index of its op in the graph)`` for every record of `graph_layers`; ``only``: just
    the records of the ops with these indices (no predictor records), ``shapes``: `ir.op_shapes` of
    the graph at batch 1 when the caller has it (a search re-costing a few ops of many variants)."""
    producers = qg.graph.producers()
    recs: list[tuple[LayerRecord, int]] = []
    for i, (op, ins, outs) in enumerate(shapes or ir.op_shapes(qg.graph, batch=1)):
        if only is None or i in only:
            recs += [(r, i) for r in group_records(qg, op, ins, outs, _record(op, ins, outs, qg, producers))]
    return recs if only is not None else recs + [(r, _predictor_op_index(qg)) for r in predictor_records(qg)]


def _predictor_op_index(qg) -> int:
    """ScalePredictor's records run once its statistic's source tensor exists (every image gets
    there): the index of that tensor's producer."""
    sources = {qz.predictor.source for qz in qg.quantizers.values() if qz.kind == "predicted"}
    found = [i for i, op in enumerate(qg.graph.ops) if set(op.outputs) & sources]
    return min(found) if found else 0
