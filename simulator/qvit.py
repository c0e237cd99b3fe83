"""The frozen description of a quantized ViT that both executors read.

Plain numpy integer codes, dyadic multipliers ``(mult, shift)`` and a few
float scales (kept only to dequantize outputs and for the fake-quant
executor's float-nonlinear mode). Built by `reference.quantize`, saved to and
loaded from one ``.npz`` file (arrays + a JSON header), never mutated.

Tensor boundaries of the integer graph and their scales::

    input    patches, a0-bit signed codes at in_scale (host-side quantization)
    x0       residual stream after patch embed + cls + pos, residual_bits
    per block:
      norm1 -> qkv -> q, k, v -> softmax(q k^T) = attn (unsigned, 2**-b)
      attn v -> attn_out -> proj (+ x, fused) = x_mid -> norm2 -> fc1 ->
      GELU (Q12 inside) -> gelu -> fc2 (+ x_mid, fused) = x_out
    norm (class token only) -> head -> logits (16-bit codes at logit_scale)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields

import numpy as np

from simulator.errors import InputError
from simulator.igq import GroupQuantizer, IgqBlock

__all__ = [
    "Linear", "LayerNormQ", "SoftmaxQ", "Requant", "GeluQ", "Block",
    "QuantizedViT", "ExitHead", "FORMAT_VERSION", "ScalePredictorQ",
]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Linear:
    """``out = saturate(requantize(x @ w_q.T + bias_q, out_mult, out_shift) [+ residual])``.

    ``w_q`` int8 [n, k] symmetric per-output-channel codes at ``w_scale``;
    ``bias_q`` int64 [n] at the accumulator scale ``in_scale * w_scale``;
    ``out_mult``/``out_shift`` int64 [n] per output channel. ``out_bits`` is
    the signed output code width (0 means the output is a Q12 fixed-point
    value for the GELU unit). When ``res_mult`` > 0 the residual input is
    requantized with ``(res_mult, res_shift)`` and added before saturation.
    """

    w_q: np.ndarray
    bias_q: np.ndarray
    w_scale: np.ndarray
    w_bits: int
    in_bits: int
    in_scale: float
    out_mult: np.ndarray
    out_shift: np.ndarray
    out_bits: int
    out_scale: np.ndarray
    res_mult: int = 0
    res_shift: int = 0
    res_bits: int = 0


@dataclass(frozen=True)
class LayerNormQ:
    """Integer LayerNorm (see `simulator.int_nonlinear`): ``eps_q`` = eps*D**2/s_x**2."""

    eps_q: int
    gamma_mult: np.ndarray
    beta_q: np.ndarray
    out_shift: int
    in_bits: int
    in_scale: float
    out_bits: int
    out_scale: float
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    channel_shift: np.ndarray | None = None   # O-2SF: channel c's codes are at out_scale * 2**shift_c
                                              # (folded into gamma_mult/beta_q, gamma/beta)


@dataclass(frozen=True)
class SoftmaxQ:
    """Integer softmax of ``q k^T``: ``(in_mult, in_shift)`` maps the accumulator to
    ``(x - max) * log2(e)`` in Q15; output unsigned codes at ``2**-out_bits``."""

    in_mult: int
    in_shift: int
    in_scale: float
    out_bits: int
    fine_exp: int = 0       # V-2SF (`simulator.two_scaled`) when ratio_shift > 0:
    ratio_shift: int = 0    # fine scale 2**-fine_exp, coarse 2**-(fine_exp - ratio_shift)


@dataclass(frozen=True)
class Requant:
    """A plain dyadic requantization of an accumulator to signed ``out_bits`` codes."""

    mult: int
    shift: int
    out_bits: int
    out_scale: float


@dataclass(frozen=True)
class GeluQ:
    """GELU on the Q12 output of fc1, then ``(out_mult, out_shift)`` to signed codes.

    ``ratio_shift > 0``: two-scaled V-2SF words (`simulator.two_scaled`), the
    multiplier and ``out_scale`` being the fine ones, coarse = fine * 2**ratio_shift."""

    out_mult: int
    out_shift: int
    out_bits: int
    out_scale: float
    ratio_shift: int = 0


@dataclass(frozen=True)
class ScalePredictorQ:
    """ScalePredictor's frozen fixed-point predictor (`simulator.scale_predictor`).

    Kept in ``QuantizedViT.extras["scale_predictor"]``. The statistic is the
    ``permille``-th per-mille order statistic of ``|x0 codes|``; ``coeffs``
    int64 [depth * 7, 4] holds Q15 ``c0..c3`` per predicted boundary (block
    major, `PREDICTED_BOUNDARIES` order); ``degree`` 0 means all zero.
    """

    permille: int
    center: int
    norm_shift: int
    degree: int
    coeffs: np.ndarray


@dataclass(frozen=True)
class Block:
    norm1: LayerNormQ
    qkv: Linear
    softmax: SoftmaxQ
    av: Requant
    proj: Linear
    norm2: LayerNormQ
    fc1: Linear
    gelu: GeluQ
    fc2: Linear
    q_scale: float
    k_scale: float
    v_scale: float
    a_bits: int


@dataclass(frozen=True)
class ExitHead:
    """An early exit after block ``after_block`` (see `simulator.exit_graph`).

    ``norm`` + ``head`` on the class token give logit codes at ``logit_scale``;
    ``confidence`` is the integer softmax of those codes, whose max code is
    compared with ``threshold_q``: the image exits when ``max >= threshold_q``
    (``threshold_q > 2**confidence.out_bits - 1`` never exits).
    """

    after_block: int
    norm: LayerNormQ
    head: Linear
    confidence: SoftmaxQ
    threshold_q: int
    logit_scale: float


@dataclass(frozen=True)
class QuantizedViT:
    """The whole frozen model. ``meta`` holds architecture and recipe facts:
    model, num_classes, embed_dim, num_heads, depth, patch_size, in_chans,
    img_size, num_tokens, global_pool, recipe, w_bits, a_bits, residual_bits."""

    meta: dict
    in_scale: float
    in_bits: int
    patch_embed: Linear
    x0_scale: float
    cls_q: np.ndarray
    pos_q: np.ndarray
    blocks: tuple
    norm: LayerNormQ
    head: Linear
    logit_scale: float
    residual_bits: int
    extras: dict = field(default_factory=dict)
    exits: tuple = ()

    # --- persistence -----------------------------------------------------
    def save(self, path: str | os.PathLike, label: str | None = None) -> None:
        """Write one ``.npz`` (arrays + JSON header) atomically (`simulator.atomic_files`);
        an OS error is an `InputError` naming ``label`` (default: the path)."""
        from simulator.atomic_files import write_bytes

        write_bytes(path, self.npz_writer(), label)

    def npz_writer(self):
        """A function writing this model's ``.npz`` into a binary file (for `atomic_files.Batch`)."""
        arrays: dict[str, np.ndarray] = {}
        header = _flatten(self, "", arrays)
        return npz_tree_writer({"format_version": FORMAT_VERSION, "tree": header}, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QuantizedViT":
        """Read a file written by `save`; a bad file is an `InputError` naming it."""
        path = os.fspath(path)
        header, arrays = read_npz_tree(path, "QuantizedViT")
        version = header.get("format_version") if isinstance(header, dict) else None
        if version != FORMAT_VERSION:
            raise InputError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}")
        try:
            q = _unflatten(header["tree"], arrays)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise InputError(f"{path}: incomplete QuantizedViT ({type(e).__name__}: {e})") from None
        if not isinstance(q, QuantizedViT):
            raise InputError(f"{path}: holds a {type(q).__name__}, not a QuantizedViT")
        from simulator.qvit_check import check_qvit

        check_qvit(q, path)   # shapes, dtypes and ranges before any kernel runs
        return q


def npz_tree_writer(header: dict, arrays: dict):
    """A function writing ``arrays`` + the JSON ``header`` (as ``__header__``) into a binary file:
    the one file layout of `QuantizedViT` and `simulator.qgraph.QuantizedGraph` (read by `read_npz_tree`)."""
    arrays = {**arrays, "__header__": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    return lambda f: np.savez(f, **arrays)


def read_npz_tree(path: str, what: str) -> tuple[object, dict]:
    """(JSON header, arrays) of a file written as arrays + ``__header__`` (`QuantizedViT.save`,
    `simulator.qgraph.QuantizedGraph.save`); a missing or corrupt file is an `InputError`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(bytes(arrays.pop("__header__")).decode())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as e:  # zip/npz/json corruption of any kind
        raise InputError(f"{path}: not a {what} file ({type(e).__name__})") from None
    return header, arrays


_CLASSES = {c.__name__: c for c in (Linear, LayerNormQ, SoftmaxQ, Requant, GeluQ, Block, QuantizedViT,
                                          ExitHead)}
_CLASSES.update({c.__name__: c for c in (GroupQuantizer, IgqBlock)})   # IGQ-ViT, in extras["igq"]
_CLASSES["ScalePredictorQ"] = ScalePredictorQ


def _flatten(obj, prefix: str, arrays: dict):
    """JSON tree of ``obj`` where every ndarray is replaced by a key into ``arrays``."""
    if isinstance(obj, np.ndarray):
        arrays[prefix] = obj
        return {"__array__": prefix}
    if dataclasses.is_dataclass(obj):
        return {"__class__": type(obj).__name__,
                **{f.name: _flatten(getattr(obj, f.name), f"{prefix}.{f.name}".lstrip("."), arrays)
                   for f in fields(obj)}}
    if isinstance(obj, (list, tuple)):
        kind = "__tuple__" if isinstance(obj, tuple) else "__list__"
        return {kind: [_flatten(v, f"{prefix}.{i}", arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        return {"__dict__": {k: _flatten(v, f"{prefix}.{k}", arrays) for k, v in obj.items()}}
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


def _unflatten(node, arrays: dict, classes: dict | None = None):
    """Inverse of `_flatten`: dataclasses are looked up by name in ``classes`` (default: this module's)."""
    classes = _CLASSES if classes is None else classes
    if isinstance(node, dict):
        if "__array__" in node:
            return arrays[node["__array__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, arrays, classes) for v in node["__tuple__"])
        if "__list__" in node:
            return [_unflatten(v, arrays, classes) for v in node["__list__"]]
        if "__dict__" in node:
            return {k: _unflatten(v, arrays, classes) for k, v in node["__dict__"].items()}
        cls = classes[node["__class__"]]
        return cls(**{k: _unflatten(v, arrays, classes) for k, v in node.items() if k != "__class__"})
    return node
