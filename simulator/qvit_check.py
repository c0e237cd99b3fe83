"""Structural checks of a loaded `QuantizedViT`, before any kernel sees it.

A ``.npz`` whose members were replaced (and the vector-set manifest
resealed) loads fine: ``np.load`` checks nothing about meaning. Without these
checks an empty member, a float member where codes belong, or a weight matrix
of another shape reaches ``torch._int_mm`` or a numba kernel (issue 18).

`check_qvit` compares every field of the static graph (patch embed, tokens,
blocks, final norm, head, exit heads) with the shapes the architecture in
``meta`` implies: same shape, same dtype kind (the weight codes exactly
int8), integers where the kernels expect integers, and the multipliers and
shifts inside their documented ranges (``0 <= shift <= 62``, ``0 <= mult <
2**31``, `reference.quantizers.dyadic`). A leaf module: `simulator.qvit`
calls it from `QuantizedViT.load`.
Recipe extras (IGQ groups, the scale predictor) are checked for numeric,
non-object dtypes; their executors validate their own shapes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from simulator.errors import InputError

__all__ = ["check_qvit"]

_ARCH_INTS = ("embed_dim", "mlp_hidden", "in_chans", "num_tokens", "depth", "num_classes", "num_heads")
_SHIFT_FIELDS = ("out_shift", "shift", "in_shift", "res_shift")
_MULT_FIELDS = ("out_mult", "mult", "in_mult", "res_mult")
_MAX_SHIFT, _MAX_MULT = 62, 1 << 31
INT, FLOAT = "int", "float"


def _arr(kind: str, *shape: int, optional: bool = False) -> tuple:
    """An array field: kind ``int8`` / ``int`` / ``float``, exact shape; ``optional``: may be None."""
    return ("array", kind, shape, optional)


# The fields of each frozen class, as `simulator.qvit` defines them (no import of the
# classes themselves: `simulator.qvit` calls this module, which stays a leaf).
def _linear(n: int, k: int) -> tuple:
    return ("Linear", {"w_q": _arr("int8", n, k), "bias_q": _arr(INT, n), "w_scale": _arr(FLOAT, n),
                       "w_bits": INT, "in_bits": INT, "in_scale": FLOAT, "out_mult": _arr(INT, n),
                       "out_shift": _arr(INT, n), "out_bits": INT, "out_scale": _arr(FLOAT, n),
                       "res_mult": INT, "res_shift": INT, "res_bits": INT})


def _layernorm(d: int) -> tuple:
    return ("LayerNormQ", {"eps_q": INT, "gamma_mult": _arr(INT, d), "beta_q": _arr(INT, d), "out_shift": INT,
                           "in_bits": INT, "in_scale": FLOAT, "out_bits": INT, "out_scale": FLOAT,
                           "gamma": _arr(FLOAT, d), "beta": _arr(FLOAT, d), "eps": FLOAT,
                           "channel_shift": _arr(INT, d, optional=True)})


_SOFTMAX = ("SoftmaxQ", {"in_mult": INT, "in_shift": INT, "in_scale": FLOAT, "out_bits": INT, "fine_exp": INT,
                         "ratio_shift": INT})
_REQUANT = ("Requant", {"mult": INT, "shift": INT, "out_bits": INT, "out_scale": FLOAT})
_GELU = ("GeluQ", {"out_mult": INT, "out_shift": INT, "out_bits": INT, "out_scale": FLOAT, "ratio_shift": INT})


def _block(d: int, f: int) -> tuple:
    return ("Block", {"norm1": _layernorm(d), "qkv": _linear(3 * d, d), "softmax": _SOFTMAX, "av": _REQUANT,
                      "proj": _linear(d, d), "norm2": _layernorm(d), "fc1": _linear(f, d), "gelu": _GELU,
                      "fc2": _linear(d, f), "q_scale": FLOAT, "k_scale": FLOAT, "v_scale": FLOAT, "a_bits": INT})


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _arch(meta, path) -> dict:
    if not isinstance(meta, dict):
        raise InputError(f"{path}: meta: expected an object")
    for k in _ARCH_INTS:
        if not _is_int(meta.get(k)) or not 0 < meta[k] <= 1 << 20:
            raise InputError(f"{path}: meta.{k}: expected a positive integer, got {meta.get(k)!r}")
    for k in ("patch_size", "img_size"):
        v = meta.get(k)
        if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_int(x) and 0 < x <= 1 << 16 for x in v):
            raise InputError(f"{path}: meta.{k}: expected two positive integers, got {v!r}")
    return meta


def _check_array(got, kind: str, shape: tuple, where: str, path) -> None:
    if not isinstance(got, np.ndarray):
        raise InputError(f"{path}: {where}: expected an array, got {type(got).__name__}")
    if got.shape != shape:
        raise InputError(f"{path}: {where}: expected shape {list(shape)}, got {list(got.shape)}")
    if kind == "int8" and got.dtype != np.int8:
        raise InputError(f"{path}: {where}: expected int8 codes, got {got.dtype}")
    if got.dtype.kind not in ("iu" if kind != FLOAT else "f"):
        raise InputError(f"{path}: {where}: expected {'a float' if kind == FLOAT else 'an integer'} dtype, "
                         f"got {got.dtype}")
    if kind == FLOAT and got.size and not np.isfinite(got).all():
        raise InputError(f"{path}: {where}: expected finite values")


def _check_range(name: str, value, where: str, path) -> None:
    hi = _MAX_SHIFT if name in _SHIFT_FIELDS else _MAX_MULT - 1
    arr = np.asarray(value)
    if arr.size and (arr.dtype.kind not in "iu" or int(arr.min()) < 0 or int(arr.max()) > hi):
        raise InputError(f"{path}: {where}: expected integers in [0, {hi}]")


def _walk(got, spec, where: str, path) -> None:
    """Check ``got`` against ``spec`` (INT, FLOAT, an array tuple or a (class name, fields) pair)."""
    if spec == INT:
        if not _is_int(got):
            raise InputError(f"{path}: {where}: expected an integer, got {type(got).__name__}")
    elif spec == FLOAT:
        if not (_is_int(got) or isinstance(got, (float, np.floating))) or not np.isfinite(got):
            raise InputError(f"{path}: {where}: expected a finite number, got {type(got).__name__}")
    elif spec[0] == "array":
        _, kind, shape, optional = spec
        if not (optional and got is None):
            _check_array(got, kind, shape, where, path)
    else:
        name, fields = spec
        if type(got).__name__ != name or not dataclasses.is_dataclass(got):
            raise InputError(f"{path}: {where}: expected a {name}, got {type(got).__name__}")
        for field, sub in fields.items():
            value = getattr(got, field)
            _walk(value, sub, f"{where}.{field}", path)
            if field in _SHIFT_FIELDS or field in _MULT_FIELDS:
                _check_range(field, value, f"{where}.{field}", path)


def _check_numeric_leaves(node, where: str, path) -> None:
    if isinstance(node, np.ndarray):
        if node.dtype.kind not in "iuf":
            raise InputError(f"{path}: {where}: expected a numeric array, got {node.dtype}")
    elif dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_numeric_leaves(getattr(node, f.name), f"{where}.{f.name}", path)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_numeric_leaves(v, f"{where}.{i}", path)
    elif isinstance(node, dict):
        for k, v in node.items():
            _check_numeric_leaves(v, f"{where}.{k}", path)


def check_qvit(q, path) -> None:
    """`InputError` naming the first field of ``q`` whose shape, dtype or range the kernels cannot take."""
    arch = _arch(q.meta, path)
    d, f, depth = arch["embed_dim"], arch["mlp_hidden"], arch["depth"]
    pdim = arch["in_chans"] * arch["patch_size"][0] * arch["patch_size"][1]
    top = {"in_scale": FLOAT, "in_bits": INT, "patch_embed": _linear(d, pdim), "x0_scale": FLOAT,
           "cls_q": _arr(INT, d), "pos_q": _arr(INT, arch["num_tokens"], d), "norm": _layernorm(d),
           "head": _linear(arch["num_classes"], d), "logit_scale": FLOAT, "residual_bits": INT}
    for name, spec in top.items():
        _walk(getattr(q, name), spec, name, path)
    for name in ("in_bits", "residual_bits"):
        if not 2 <= getattr(q, name) <= 32:
            raise InputError(f"{path}: {name}: expected an integer in [2, 32], got {getattr(q, name)}")
    if not isinstance(q.blocks, (tuple, list)) or len(q.blocks) != depth:
        raise InputError(f"{path}: blocks: expected {depth} blocks (meta.depth)")
    for i, blk in enumerate(q.blocks):
        _walk(blk, _block(d, f), f"blocks.{i}", path)
    if not isinstance(q.exits, (tuple, list)):
        raise InputError(f"{path}: exits: expected a list")
    exit_spec = ("ExitHead", {"after_block": INT, "norm": _layernorm(d), "head": _linear(arch["num_classes"], d),
                              "confidence": _SOFTMAX, "threshold_q": INT, "logit_scale": FLOAT})
    for i, e in enumerate(q.exits):
        _walk(e, exit_spec, f"exits.{i}", path)
        if not 0 <= e.after_block < depth:
            raise InputError(f"{path}: exits.{i}.after_block: expected a block in [0, {depth - 1}]")
    if not isinstance(q.extras, dict):
        raise InputError(f"{path}: extras: expected an object")
    _check_numeric_leaves(q.extras, "extras", path)
