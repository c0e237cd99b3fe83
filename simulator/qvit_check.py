"""Structural checks of a loaded `QuantizedViT`, before any kernel sees it.

A ``.npz`` whose members were replaced (and the vector-set manifest
resealed) loads fine: ``np.load`` checks nothing about meaning. Without these
checks an empty member, a float member where codes belong, or a weight matrix
of another shape reaches ``torch._int_mm`` or a numba kernel (issue 18).

`check_qvit` compares every array of the static graph (patch embed, tokens,
blocks, final norm, head, exit heads) with the shape-only graph of the same
architecture (`simulator.shapes.shape_only_qvit`, built from ``meta``):
same shape, same dtype kind (the weight codes exactly int8), and the integer
parameters the kernels shift and multiply by inside their documented ranges.
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
    return {**meta, "patch_size": tuple(meta["patch_size"]), "img_size": tuple(meta["img_size"])}


def _check_array(got, ref: np.ndarray, where: str, path) -> None:
    if not isinstance(got, np.ndarray):
        raise InputError(f"{path}: {where}: expected an array, got {type(got).__name__}")
    if got.shape != ref.shape:
        raise InputError(f"{path}: {where}: expected shape {list(ref.shape)}, got {list(got.shape)}")
    if ref.dtype == np.int8 and got.dtype != np.int8:
        raise InputError(f"{path}: {where}: expected int8 codes, got {got.dtype}")
    kind = "iu" if ref.dtype.kind in "iu" else "f"
    if got.dtype.kind not in kind:
        raise InputError(f"{path}: {where}: expected {'an integer' if kind == 'iu' else 'a float'} dtype, "
                         f"got {got.dtype}")
    if kind == "f" and got.size and not np.isfinite(got).all():
        raise InputError(f"{path}: {where}: expected finite values")


def _check_range(name: str, value, where: str, path) -> None:
    hi = _MAX_SHIFT if name in _SHIFT_FIELDS else _MAX_MULT - 1
    arr = np.asarray(value)
    if arr.size and (arr.dtype.kind not in "iu" or int(arr.min()) < 0 or int(arr.max()) > hi):
        raise InputError(f"{path}: {where}: expected integers in [0, {hi}]")


def _walk(got, ref, where: str, path) -> None:
    """Compare ``got`` with the shape-only ``ref`` node by node."""
    if isinstance(ref, np.ndarray):
        _check_array(got, ref, where, path)
    elif dataclasses.is_dataclass(ref):
        if type(got) is not type(ref):
            raise InputError(f"{path}: {where}: expected a {type(ref).__name__}, got {type(got).__name__}")
        for f in dataclasses.fields(ref):
            g, r = getattr(got, f.name), getattr(ref, f.name)
            w = f"{where}.{f.name}" if where else f.name
            if f.name == "meta":
                continue
            if r is None:
                if g is not None and not isinstance(g, np.ndarray):
                    raise InputError(f"{path}: {w}: expected an array or null, got {type(g).__name__}")
                continue
            _walk(g, r, w, path)
            if f.name in _SHIFT_FIELDS or f.name in _MULT_FIELDS:
                _check_range(f.name, g, w, path)
    elif isinstance(ref, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(ref):
            raise InputError(f"{path}: {where}: expected {len(ref)} entries")
        for i, (g, r) in enumerate(zip(got, ref)):
            _walk(g, r, f"{where}.{i}", path)
    elif _is_int(ref):
        if not _is_int(got):
            raise InputError(f"{path}: {where}: expected an integer, got {type(got).__name__}")
    elif isinstance(ref, float):
        if not isinstance(got, (int, float, np.integer, np.floating)) or isinstance(got, bool) \
                or not np.isfinite(got):
            raise InputError(f"{path}: {where}: expected a finite number, got {got!r}")


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
    from simulator.shapes import shape_only_qvit

    arch = _arch(q.meta, path)
    if len(q.blocks) != arch["depth"]:
        raise InputError(f"{path}: blocks: expected {arch['depth']} (meta.depth), got {len(q.blocks)}")
    for name in ("in_bits", "residual_bits"):
        v = getattr(q, name)
        if not _is_int(v) or not 2 <= v <= 32:
            raise InputError(f"{path}: {name}: expected an integer in [2, 32], got {v!r}")
    ref = shape_only_qvit(arch, 8, 8, q.residual_bits, 8)
    for name in ("in_scale", "patch_embed", "x0_scale", "cls_q", "pos_q", "norm", "head", "logit_scale"):
        _walk(getattr(q, name), getattr(ref, name), name, path)
    for i, (blk, rblk) in enumerate(zip(q.blocks, ref.blocks)):
        _walk(blk, rblk, f"blocks.{i}", path)
    if not isinstance(q.exits, (tuple, list)):
        raise InputError(f"{path}: exits: expected a list")
    for i, e in enumerate(q.exits):
        where = f"exits.{i}"
        if type(e).__name__ != "ExitHead" or not _is_int(e.after_block) or not 0 <= e.after_block < arch["depth"]:
            raise InputError(f"{path}: {where}: expected an ExitHead after a block in [0, {arch['depth'] - 1}]")
        _walk(e.norm, ref.norm, f"{where}.norm", path)
        _walk(e.head, ref.head, f"{where}.head", path)
    if not isinstance(q.extras, dict):
        raise InputError(f"{path}: extras: expected an object")
    _check_numeric_leaves(q.extras, "extras", path)
