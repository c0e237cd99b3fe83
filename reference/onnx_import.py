"""Import a QDQ ONNX model of a supported ViT into the integer graph (docs/onnx.md).

    qg = import_qdq("deit_qdq.onnx", model, calib_images)     # -> QuantizedGraph
    report = ort_comparison(qg, open("deit_qdq.onnx", "rb").read(), images, labels)

The architecture is read from the file (`reference.onnx_architecture`: a
timm ``VisionTransformer`` exported by ``torch.onnx.export``), or taken from a
timm ``model`` when one is given (lowered by `reference.lower`, the supported
configurations of docs/graph.md). From the ONNX file come **every float
param** (LayerNorm gamma/beta, prefix tokens, position embedding, biases,
LayerScale; the model's own are replaced), the **weights** (the integer codes
and per-channel scales behind each weight ``DequantizeLinear``) and the
**activation scales** at every GEMM input that has a ``QuantizeLinear ->
DequantizeLinear`` pair -- what ``onnxruntime.quantization.quantize_static``
(QDQ) writes. A graph the reader does not know (e.g. ``qk_norm``, post-norm
blocks) still imports with a ``model``: then, with a warning, only the GEMM
weights and scales come from the file.

Matching: the ONNX ``Conv`` / ``MatMul`` / ``Gemm`` nodes, in graph order,
are the graph's GEMMs (``linear``, ``head``, ``matmul``) in walk order; the
counts and every weight shape must agree, else a one-line `InputError`. A
GEMM input's ONNX scale ``s`` is the scale of the IR tensor it reads after
the constant factors between them (timm multiplies ``q`` by ``attn.scale``
before ``q k^T``; SDPA's export by ``sqrt`` of it on both sides): codes of
``c x`` at ``s`` are codes of ``x`` at ``s / c``.

Conversion: every scale becomes the graph's dyadic multipliers by the static
recipe's own freezing (`reference.recipes.static_graph.freeze_op`): weights
re-frozen with ``minmax`` scales from the imported codes (``max|w_q| = 127``
per channel reproduces the ONNX scale and codes; checked, and reported in
``meta``), activations from the ONNX scales. Zero points must be 0
(symmetric: ``extra_options={"ActivationSymmetric": True}``); an asymmetric
activation is refused. Tensors the QDQ model leaves float (the residual
stream, LayerNorm inputs, ``q k^T``, logits) get the static recipe's
calibration on ``calib_images`` (16-bit residual stream). The softmax output
keeps the integer softmax's power-of-two grid: ONNX scale ``s`` becomes
unsigned ``b``-bit codes at ``2**-b``, ``b = round(-log2 s)`` (ORT's min-max
scale ``max p / 127`` is ``2**-7`` when some probability reaches 1; on a
random DeiT it is ~``2**-10``, and ours then holds probabilities up to 1
where ORT saturates at ``127 s``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from reference.recipes.config import RecipeConfig
from simulator import ir
from simulator.errors import InputError
from simulator.qgraph import QuantizedGraph, Quantizer

__all__ = ["import_qdq", "model_for_import", "ort_comparison", "QDQModel"]

log = logging.getLogger(__name__)

_GEMMS = ("Conv", "MatMul", "Gemm")
_PASS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten")
_CONST_OPS = {"Sqrt": np.sqrt, "Mul": lambda a, b: a * b, "Div": lambda a, b: a / b,
              "Cast": lambda a: np.asarray(a, np.float64), "Identity": lambda a: a, "Reciprocal": lambda a: 1.0 / a}


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise InputError("the onnx package is not installed (pip install -e \".[onnx]\")") from None
    return onnx, numpy_helper


class QDQModel:
    """An ONNX model's nodes, producers and constants, for tracing QDQ pairs."""

    def __init__(self, path: str):
        onnx, nh = _onnx()
        try:
            self.model = onnx.load(path)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except Exception as e:  # noqa: BLE001 -- protobuf decode errors have many types
            raise InputError(f"{path}: not an ONNX model ({type(e).__name__})") from None
        self.path, self.nh = path, nh
        g = self.model.graph
        self.nodes = list(g.node)
        self.init = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self._consts: dict = {}
        self._dynamic: dict = {}
        self._scalars: dict | None = None
        kinds = {n.op_type for n in self.nodes}
        if not {"QuantizeLinear", "DequantizeLinear"} <= kinds:
            raise InputError(f"{path}: no QuantizeLinear/DequantizeLinear nodes: not a QDQ model "
                             "(quantize it with onnxruntime.quantization.quantize_static, QuantFormat.QDQ)")

    def const(self, name: str):
        """The value of an initializer or a constant subgraph (Constant, Sqrt/Mul/Div/Cast of constants), else None."""
        if name in self.init:
            return self.nh.to_array(self.init[name])
        n = self.producer.get(name)
        if n is None:
            return None
        if n.op_type == "Constant":
            return self.nh.to_array(n.attribute[0].t) if n.attribute[0].name == "value" else None
        f = _CONST_OPS.get(n.op_type)
        if f is None:
            return None
        if name not in self._consts:
            args = [self.const(i) for i in n.input]
            self._consts[name] = None if any(a is None for a in args) else np.asarray(f(*args), np.float64)
        return self._consts[name]

    def dq_of(self, value: str):
        """(codes or None, scale, zero point, axis, quantized value name, Q input) of the
        DequantizeLinear making ``value``; None when another op makes it."""
        n = self.producer.get(value)
        if n is None or n.op_type != "DequantizeLinear":
            return None
        scale = np.asarray(self.const(n.input[1]), np.float64)
        zp = self.const(n.input[2]) if len(n.input) > 2 else np.zeros((), np.int8)
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        codes = self.const(n.input[0])
        q = self.producer.get(n.input[0])
        q_in = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None
        return codes, scale, zp, axis, n.input[0], q_in

    def scalar(self, name: str) -> float | None:
        """A scalar operand: a constant, or a value computed from shapes only (SDPA's ``sqrt(1/sqrt(d))``),
        evaluated once by onnxruntime on a zero input; None when it is not a scalar."""
        c = self.const(name)
        if c is None:
            if name not in self._dynamic:
                self._dynamic[name] = self._evaluate(name)
            c = self._dynamic[name]
        c = None if c is None else np.asarray(c, np.float64)
        return float(c.reshape(-1)[0]) if c is not None and c.size == 1 else None

    def _evaluate(self, name: str):
        if self._scalars is None:              # one session for every block's SDPA factors
            self._scalars = self._run({vi.name: vi for vi in self._float_scalars()}) or {}
        if name in self._scalars:
            return self._scalars[name]
        return (self._run({name: None}) or {}).get(name)

    def _float_scalars(self) -> list:
        """value_info of every value that shape inference says is a float32 of one element."""
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(self.model)
        except Exception:  # noqa: BLE001 -- inference is an optimisation here; values are then evaluated one by one
            return []
        out = []
        for vi in inferred.graph.value_info:
            t = vi.type.tensor_type
            if (t.elem_type == onnx.TensorProto.FLOAT and t.HasField("shape")
                    and all(d.HasField("dim_value") and d.dim_value == 1 for d in t.shape.dim)):
                out.append(vi)
        return out

    def _run(self, values: dict) -> dict | None:
        """onnxruntime's values of ``values`` (name -> value_info or None) on a zero input; None on failure."""
        from onnx import helper

        from simulator.onnx_session import ort_session

        if not values:
            return None
        m = self.model.__class__()
        m.CopyFrom(self.model)
        del m.graph.output[:]
        m.graph.output.extend(vi if vi is not None else helper.make_tensor_value_info(k, 1, None)
                              for k, vi in values.items())
        inp = m.graph.input[0]
        dims = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        try:
            sess = ort_session(m.SerializeToString(), optimize=False)
            return dict(zip(values, sess.run(None, {inp.name: np.zeros(dims, np.float32)})))
        except Exception:  # noqa: BLE001 -- a non-float or data-dependent value: not a factor
            return None

    def factor(self, value: str) -> float:
        """Product of the scalar factors between ``value`` and the non-view op that makes it."""
        c = 1.0
        while True:
            n = self.producer.get(value)
            if n is None:
                return c
            if n.op_type in _PASS:
                value = n.input[0]
                continue
            if n.op_type not in ("Mul", "Div"):
                return c
            k1 = self.scalar(n.input[1])
            k0 = self.scalar(n.input[0]) if n.op_type == "Mul" and k1 is None else None
            if k1 is not None:
                c, value = (c * k1 if n.op_type == "Mul" else c / k1), n.input[0]
            elif k0 is not None:
                c, value = c * k0, n.input[1]
            else:
                return c


def _act_quantizer(t_model: QDQModel, value: str, what: str, softmax: bool, scaled: bool):
    dq = t_model.dq_of(value)
    if dq is None:
        return None, None
    _, scale, zp, _, q_name, q_in = dq
    if np.any(np.asarray(zp) != 0):
        raise InputError(f"{t_model.path}: {what}: zero point {np.asarray(zp).reshape(-1)[0]} (asymmetric); "
                         "only symmetric activations (zero point 0) import; quantize with "
                         "extra_options={'ActivationSymmetric': True}")
    if scale.size != 1:
        raise InputError(f"{t_model.path}: {what}: per-channel activation scale; expected one scale per tensor")
    unsigned = np.asarray(zp).dtype.kind == "u"
    bits = np.asarray(zp).dtype.itemsize * 8
    c = t_model.factor(q_in) if q_in is not None and scaled else 1.0
    if softmax:                 # the integer softmax's power-of-two grid (see the module docstring)
        b = int(np.clip(round(-np.log2(float(scale.reshape(-1)[0]))), 2, 15))
        return Quantizer("static", 2.0 ** -b, b, signed=False), (q_name, 1.0, float(scale.reshape(-1)[0]))
    if unsigned:
        raise InputError(f"{t_model.path}: {what}: unsigned codes for a signed tensor; quantize activations as "
                         "QInt8 with ActivationSymmetric")
    return Quantizer("static", float(scale.reshape(-1)[0]) / abs(c), bits), (q_name, c, float(scale.reshape(-1)[0]))


def _weight(t_model: QDQModel, node, ir_shape, what: str):
    """Imported weight codes [N, K] and per-row scales [N] of a Conv / MatMul / Gemm."""
    dq = t_model.dq_of(node.input[1])
    if dq is None or dq[0] is None:
        raise InputError(f"{t_model.path}: {what}: weight of {node.name or node.op_type} is not a "
                         "DequantizeLinear of an initializer (expected QDQ weights)")
    codes, scale, zp, axis, _, _ = dq
    if np.any(np.asarray(zp) != 0):
        raise InputError(f"{t_model.path}: {what}: weight zero point is not 0")
    codes = np.asarray(codes, np.int64)
    if node.op_type == "Conv":
        w, n_axis = codes.reshape(codes.shape[0], -1), 0
    elif node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        w, n_axis = codes, 0
    else:
        w, n_axis = codes.T, 1                     # MatMul: [K, N]
    s = scale.reshape(-1)
    if s.size == 1:
        s = np.full(w.shape[0], float(s[0]))
    elif (axis % codes.ndim) != n_axis:
        raise InputError(f"{t_model.path}: {what}: weight scales on axis {axis}, expected the output channels")
    if tuple(w.shape) != tuple(ir_shape):
        raise InputError(f"{t_model.path}: {what}: weight shape {tuple(w.shape)}, the model's is {tuple(ir_shape)}")
    return w, s


def model_for_import(m: QDQModel, model=None, num_heads: int | None = None, data_config: dict | None = None):
    """(timm model holding the file's float params, architecture record): `model_from_qdq`; for a graph
    its reader does not know, a given ``model`` as it is (a warning: only GEMM weights and scales import)."""
    from reference.onnx_architecture import model_from_qdq
    from reference.onnx_vit_reader import UnreadableGraph

    try:
        return model_from_qdq(m, model, num_heads, data_config)
    except UnreadableGraph as e:
        if model is None:
            raise
        log.warning("%s; so only the GEMM weights and activation scales come from the file, the other float "
                    "params (LayerNorm, tokens, biases) from the given model", str(e).split("; pass --model")[0])
        return model, {"source": "model", "kwargs": None, "params": "GEMM weights only"}


def import_qdq(path: "str | QDQModel", model=None, calib_images: np.ndarray | None = None, image_size=None,
               residual_bits: int = 16, *, num_heads: int | None = None, architecture: dict | None = None
               ) -> QuantizedGraph:
    """A `QuantizedGraph` of the QDQ file (module docstring). ``model`` None: the architecture is read from
    the file (``num_heads`` when its attention Reshape does not give it); given: ``model``'s architecture.
    ``architecture``: the record of a `model_for_import` that already made ``model`` (the CLI)."""
    from reference.lowering import lower
    from reference.recipes.static import Scales
    from reference.recipes.static_graph import assign_quantizers, collect_graph_stats, freeze_op, owners, stat_names

    if calib_images is None:
        raise TypeError("import_qdq: calib_images is required")
    m = path if isinstance(path, QDQModel) else QDQModel(path)
    path = m.path
    if architecture is None:
        model, architecture = model_for_import(m, model, num_heads)
    graph = lower(model, image_size=image_size) if image_size else lower(model)
    gemm_nodes = [n for n in m.nodes if n.op_type in _GEMMS]
    gemm_ops = [op for op in graph.ops if op.kind in ("linear", "head", "matmul")]
    if len(gemm_nodes) != len(gemm_ops):
        raise InputError(f"{path}: {len(gemm_nodes)} Conv/MatMul/Gemm nodes, the model's graph has {len(gemm_ops)} "
                         "GEMMs (linear, head, attention matmuls): not this architecture")
    own, prod = owners(graph), graph.producers()
    fixed: dict[str, Quantizer] = {}
    where: dict[str, tuple] = {}
    params = {k: dict(v) for k, v in graph.params.items()}
    w_codes = {}
    for node, op in zip(gemm_nodes, gemm_ops):
        n_act = 2 if op.kind == "matmul" else 1
        if op.kind != "matmul":
            w, s = _weight(m, node, params[op.name]["weight"].shape, op.name)
            params[op.name]["weight"] = w * s[:, None]
            w_codes[op.name] = w
        elif m.dq_of(node.input[1]) is not None and m.dq_of(node.input[1])[0] is not None:
            raise InputError(f"{path}: {op.name}: the ONNX node has a constant weight; the model's op is "
                             "activation x activation (node order differs from the model)")
        scaled = op.kind == "matmul" and op.scale != 1.0     # q k^T: the attention scale sits on q and/or k
        found = []
        for i in range(n_act):
            t = own[op.inputs[i]]
            softmax = prod[t].kind == "softmax"
            qz, loc = _act_quantizer(m, node.input[i], f"{op.name} input {i} ({t})", softmax, scaled)
            if qz is not None:
                fixed[t], where[t] = qz, loc
                found.append(loc[1])
        if scaled and len(found) == 2 and not np.isclose(found[0] * found[1], op.scale, rtol=1e-5):
            raise InputError(f"{path}: {op.name}: the factors before the ONNX MatMul multiply to "
                             f"{found[0] * found[1]:.6g}, the attention scale is {op.scale:.6g}")
    graph = dataclasses.replace(graph, params=params)
    bits = sorted({q.bits for q in fixed.values()} or {8})
    cfg = RecipeConfig(w_bits=8, a_bits=8, weight_calibration="minmax", residual_bits=residual_bits,
                       calib_images=len(calib_images), edge_bits=0)
    calib = np.asarray(calib_images)
    stats = collect_graph_stats(graph, calib, stat_names(graph))
    q = assign_quantizers(graph, Scales(stats, cfg), cfg, fixed=fixed)
    out = {}
    for op in graph.ops:
        p = freeze_op(op, graph, q, cfg, prod)
        if p is not None:
            out[op.name] = p
    same = sum(int((out[k].w_q == w).sum()) for k, w in w_codes.items())
    total = sum(w.size for w in w_codes.values())
    meta = {"model": type(model).__name__, "architecture": architecture,
            "recipe": "onnx_qdq", "label": "onnx_qdq", "source": str(path),
            "w_bits": 8, "a_bits": int(bits[-1]), "residual_bits": residual_bits,
            "calibration": {"images": int(len(calib)), "imported_tensors": sorted(fixed)},
            "onnx_codes": {t: list(v) for t, v in where.items()},
            "weight_codes_equal": [same, total]}
    return QuantizedGraph(graph=graph, quantizers=q, params=out, meta=meta)


def _patches(x: np.ndarray, op: ir.Patchify) -> np.ndarray:
    """[B, C, H, W] -> [B, gh*gw, C*ph*pw] in the graph's (c, i, j) order (crop to whole patches)."""
    (ph, pw), (b, c, h, w) = op.patch_size, x.shape
    gh, gw = h // ph, w // pw
    x = x[:, :, :gh * ph, :gw * pw].reshape(b, c, gh, ph, gw, pw)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * ph * pw)


def ort_comparison(qg: QuantizedGraph, model_bytes: bytes, images: np.ndarray, labels=None,
                   batch_size: int = 64, float_logits: np.ndarray | None = None) -> dict:
    """onnxruntime (all optimizations: its integer QDQ kernels) on the QDQ model against the simulator of the
    imported graph: top-1 agreement, logit SQNR, and at every imported boundary the share of codes equal
    and within +-1 (onnxruntime's QuantizeLinear output vs the simulator's codes)."""
    import onnx
    from onnx import helper

    from reference.layer_error import sqnr_db
    from simulator.int_ops import GraphIntegerExecutor
    from simulator.onnx_session import ort_session

    model = onnx.load_from_string(model_bytes)
    where = qg.meta.get("onnx_codes", {})
    elem = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            elem[n.output[0]] = n
    zp_type = {}
    init = {t.name: t for t in model.graph.initializer}
    for name, n in elem.items():
        zp = init.get(n.input[2]) if len(n.input) > 2 else None
        zp_type[name] = zp.data_type if zp is not None else onnx.TensorProto.INT8
    extra = [t for t in where if where[t][0] in zp_type]
    for t in extra:
        model.graph.output.append(helper.make_tensor_value_info(where[t][0], zp_type[where[t][0]], None))
    sess = ort_session(model.SerializeToString(), optimize=True)
    in_name = sess.get_inputs()[0].name
    outs = [sess.run(None, {in_name: images[s:s + batch_size].astype(np.float32)})
            for s in range(0, len(images), batch_size)]
    logits = np.concatenate([o[0] for o in outs])
    ort_codes = {t: np.concatenate([o[1 + i] for o in outs]).astype(np.int64) for i, t in enumerate(extra)}
    sim = GraphIntegerExecutor(qg).run(images, batch_size)
    rows = []
    for t in extra:
        a, b = ort_codes[t], sim.codes[t]
        if t == qg.graph.input or qg.graph.producers()[t].kind == "patchify":
            a = _patches(a, qg.graph.producers()[t])
        if a.shape != b.shape and a.ndim == 4 and a.shape == b.swapaxes(-1, -2).shape:
            a = a.swapaxes(-1, -2)                # k^T
        step = float(np.asarray(qg.quantizers[t].scale)) * abs(where[t][1]) / where[t][2]
        if not np.isclose(step, 1.0, rtol=1e-9):      # softmax: our 2**-b grid -> ORT's step, nearest code
            b = np.floor(b * step + 0.5).astype(np.int64)
        if a.shape != b.shape:
            rows.append({"tensor": t, "equal": None, "within_1": None, "note": f"shapes {a.shape} vs {b.shape}"})
            continue
        d = np.abs(a - b)
        rows.append({"tensor": t, "bits": qg.quantizers[t].bits, "grid_ratio": step, "equal": float((d == 0).mean()),
                     "within_1": float((d <= 1).mean()), "max_abs_diff": int(d.max())})
    pred = logits.argmax(1)
    shares = lambda key: float(np.mean([r[key] for r in rows if r[key] is not None])) if rows else None  # noqa: E731
    summary = {"images": int(len(images)), "top1_agreement": float((pred == sim.predictions).mean()),
               "logit_sqnr_db": sqnr_db(sim.logits, logits),
               "ort_classes": int(len(np.unique(pred))),
               "boundaries": len(rows),
               "codes_equal": shares("equal"), "codes_within_1": shares("within_1"),
               "weight_codes_equal": qg.meta.get("weight_codes_equal")}
    if float_logits is not None:           # both against the fp32 model: how much of the gap is quantization noise
        ref = np.asarray(float_logits).argmax(1)
        summary["ort_agree_fp32"] = float((pred == ref).mean())
        summary["simulator_agree_fp32"] = float((sim.predictions == ref).mean())
    if labels is not None:
        summary["ort_top1"] = float((pred == labels).mean())
        summary["simulator_top1"] = float((sim.predictions == labels).mean())
    return {"summary": summary, "boundaries": rows}
