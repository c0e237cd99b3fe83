"""Non-finite and degenerate checkpoints, refused before they reach a quantizer.

Three failure modes of a checkpoint that loads (right keys, right shapes) but
cannot be quantized (issue 18):

* **non-finite weights** (NaN, inf): `check_finite_state_dict` names the first
  such tensor in the model's key order. A NaN head bias used to run to the
  end with a numpy warning and write results.
* **float overflow in the forward pass** (a weight of 1e30 makes LayerNorm's
  variance inf in float32) and **zero ranges** (an all-zero checkpoint makes
  every LayerNorm / linear output exactly 0, so no activation scale exists
  and every rescale factor ``s_in * s_w / s_out`` is unbounded):
  `check_boundary_ranges` looks at the calibration statistics of every
  tensor boundary and names the layer that produced the first bad one.
* **a rescale factor beyond a 31-bit dyadic multiplier** for any remaining
  reason: `reference.quantizers.dyadic` raises `DyadicRangeError`, which
  `reference.recipes.quantize` turns into the same kind of one-line error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from simulator.errors import InputError

__all__ = ["check_finite_state_dict", "check_boundary_ranges", "boundary_layer"]

# Boundaries whose all-zero range is harmless: scaled q k^T feeds softmax, whose
# input scale is derived from q and k (already checked), not calibrated.
_ZERO_OK = ("attn_logits",)
_PRODUCER = {"input": "patch_embed (input patches)", "x0": "patch_embed", "q": "attn.qkv", "k": "attn.qkv",
             "v": "attn.qkv", "attn_logits": "attn (q k^T)", "attn": "attn.softmax", "attn_out": "attn (attn @ v)",
             "x_mid": "attn.proj", "fc1": "mlp.fc1", "gelu": "mlp.act", "x_out": "mlp.fc2", "logits": "head"}


def check_finite_state_dict(state_dict: Mapping[str, torch.Tensor], order, path) -> None:
    """`InputError` naming the first (in ``order``) floating tensor holding a NaN or an infinity."""
    for key in order:
        t = state_dict.get(key)
        if t is None or not t.is_floating_point():
            continue
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            idx = [int(i) for i in torch.nonzero(bad)[0]] if t.dim() else []
            value = float(t[tuple(idx)]) if idx else float(t)
            raise InputError(f"{path}: tensor {key!r} holds {value} at index {idx}; expected finite weights "
                             f"({int(bad.sum())} non-finite values)")


def boundary_layer(name: str) -> str:
    """The layer that produces a boundary tensor, e.g. ``blocks.0.x_out`` -> ``blocks.0.mlp.fc2``."""
    head, _, last = name.rpartition(".")
    prefix = head + "." if head else ""
    return prefix + _PRODUCER.get(last, last)


def check_boundary_ranges(stats: Mapping, n_images: int) -> None:
    """`InputError` naming the layer of the first boundary (forward order) whose calibration range
    is not finite (float overflow) or exactly zero (no scale exists)."""
    for name, s in stats.items():
        if not math.isfinite(s.amax):
            raise InputError(f"layer {boundary_layer(name)}: its output ({name}) overflows float32 on the "
                             f"calibration images (max |x| = {s.amax}); expected weights of a trained model")
    for name, s in stats.items():
        if s.amax == 0 and name.rpartition(".")[2] not in _ZERO_OK:
            raise InputError(f"layer {boundary_layer(name)}: its output ({name}) is exactly 0 on all "
                             f"{n_images} calibration images, so it has no quantization scale "
                             f"(an all-zero or degenerate checkpoint?)")
