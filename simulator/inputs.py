"""Validation of the float images handed to an executor's ``run``.

Both executors (`simulator.int_ops.GraphIntegerExecutor` and the fake-quant
executor in `reference.fakequant_ops`) call `check_graph_images` first, so a wrong
shape, dtype or a NaN is one `InputError` line instead of a numpy/torch
traceback deep inside a kernel (or, worse, silently saturated codes: a NaN
quantizes to an arbitrary integer).
"""

from __future__ import annotations

import numpy as np

from simulator.errors import InputError

__all__ = ["check_images", "check_graph_images"]


def expected_image_shape(meta: dict) -> tuple[int, int, int]:
    """(C, H, W) the frozen model was built for, from the QuantizedGraph's ``meta``."""
    h, w = meta["img_size"]
    return int(meta["in_chans"]), int(h), int(w)


def check_images(images, meta: dict) -> np.ndarray:
    """Return ``images`` as float32 [N, C, H, W] or raise `InputError` naming the problem.

    Accepted: any real (bool excluded) numeric array-like of the model's
    (C, H, W) per image, every value finite. N may be 0.
    """
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else images
    try:
        arr = np.asarray(arr)
    except (TypeError, ValueError) as e:
        raise InputError(f"images: expected a numeric array [N, C, H, W], got {type(images).__name__} "
                         f"({type(e).__name__})") from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"images: expected a real numeric dtype (float32), got {arr.dtype}")
    chw = expected_image_shape(meta)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != chw:
        raise InputError(f"images: expected shape [N, {chw[0]}, {chw[1]}, {chw[2]}] for model "
                         f"{meta.get('model', '?')!r}, got {list(arr.shape)}")
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise InputError(f"images: non-finite value {arr[bad]} at index {list(bad)}")
    return arr


def check_graph_images(images, qgraph) -> np.ndarray:
    """`check_images` for a `simulator.qgraph.QuantizedGraph`: the (C, H, W) it was lowered for."""
    g = qgraph.graph
    meta = {"img_size": list(g.image_size), "in_chans": g.in_chans, "model": qgraph.meta.get("model", "?")}
    return check_images(images, meta)
