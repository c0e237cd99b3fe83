"""Swin Transformer's index ops and score formula, numpy only.

Swin (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows", ICCV 2021) computes attention inside non-overlapping
windows of ``wh x ww`` tokens; every other block first shifts the token grid
cyclically by ``-(wh//2, ww//2)`` (``torch.roll``) so windows straddle the
previous block's borders, and masks the pairs of tokens that the roll brought
together from opposite edges. Stages are joined by patch merging: the 2x2
neighbours of a token concatenated on channels.

All three are pure token permutations / gathers on a row-major ``gh x gw``
grid, so the graph has one op kind for them (`simulator.ir.GatherTokens`):
``y[:, t] = concat_j x[:, index[t, j]]`` with ``index = token_index(op)``:

* ``window_partition``: output token ``t = w*N + n`` (window ``w`` row-major
  over the window grid, ``n`` row-major inside the window, timm's
  ``window_partition``) is grid token ``((r + sh) mod gh, (c + sw) mod gw)``
  where ``(r, c)`` is its position in the shifted grid (``roll(x, -shift)``).
* ``window_reverse``: the inverse permutation (``window_reverse`` then
  ``roll(x, +shift)``).
* ``patch_merge``: output ``(i, j)`` channel block ``k = 2*dj + di`` is grid
  token ``(2i + di, 2j + dj)`` (timm's ``reshape(B, H/2, 2, W/2, 2, C)
  .permute(0, 1, 3, 4, 2, 5)``: blocks x0 = (0,0), x1 = (1,0), x2 = (0,1),
  x3 = (1,1)).

The index ops move codes unchanged, so every executor applies them to
integer codes and floats alike and they cost no arithmetic.

Masked scores (`window_scores`): timm adds -100 to the scores of masked
pairs before the softmax. On the integer path a masked score takes the
minimum int32 code, so the integer softmax gives it exactly 0 (its
``2**-u`` underflows: ``u >= 62`` in `simulator.int_nonlinear.exp2_neg`);
every row keeps its own token unmasked, so no row is all masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.fixedpoint import saturate

__all__ = ["WindowBiasQ", "PATTERNS", "check_pattern", "token_index", "partition_index", "masked_pairs", "window_scores",
           "gather", "split_window_heads", "merge_window_heads", "ACC_MIN", "ACC_MAX"]

PATTERNS = ("window_partition", "window_reverse", "patch_merge")
ACC_MIN, ACC_MAX = -(1 << 31), (1 << 31) - 1        # the int32 accumulator range


@dataclass(frozen=True)
class WindowBiasQ:
    """Frozen `simulator.ir.WindowBias`: ``bias_q`` [H,N,N] int64, the relative
    position bias as codes of the scores' accumulator scale
    (``round_half_up(bias / s_acc)``, saturated to int32); ``masked`` [W,N,N]
    uint8, 1 where the pair is masked; ``mask_add``: 0 for the minimum-code
    mask, else the code added to masked scores (timm's -100 on the score scale)."""
    bias_q: np.ndarray
    masked: np.ndarray
    mask_add: int = 0


def check_pattern(op) -> None:
    """Raise ValueError (a graph construction bug) unless ``op``'s geometry is consistent."""
    gh, gw = op.grid
    wh, ww = op.window
    if op.pattern not in PATTERNS:
        raise ValueError(f"{op.name}: pattern {op.pattern!r} is not one of {PATTERNS}")
    if op.pattern == "patch_merge":
        if gh % 2 or gw % 2:
            raise ValueError(f"{op.name}: patch merging needs an even grid, got {gh}x{gw}")
        return
    if wh < 1 or ww < 1 or gh % wh or gw % ww:
        raise ValueError(f"{op.name}: window {wh}x{ww} does not divide the {gh}x{gw} grid")
    if not (0 <= op.shift[0] < wh and 0 <= op.shift[1] < ww):
        raise ValueError(f"{op.name}: shift {op.shift} is not inside the {wh}x{ww} window")


def partition_index(grid, window, shift) -> np.ndarray:
    """``[T]``: grid token read by each window-major output token (see the module docstring)."""
    gh, gw = grid
    wh, ww = window
    r = np.arange(gh).reshape(gh // wh, wh)          # shifted rows by (window row, row in window)
    c = np.arange(gw).reshape(gw // ww, ww)
    src_r = (r + shift[0]) % gh
    src_c = (c + shift[1]) % gw
    # [wi, wj, a, b] -> grid token
    tok = src_r[:, None, :, None] * gw + src_c[None, :, None, :]
    return tok.reshape(-1)


def token_index(op) -> np.ndarray:
    """``[T', k]`` int64 gather index of a `simulator.ir.GatherTokens` op."""
    gh, gw = op.grid
    if op.pattern == "patch_merge":
        i, j = np.arange(gh // 2)[:, None], np.arange(gw // 2)[None, :]
        blocks = [(2 * i + di) * gw + (2 * j + dj) for dj in (0, 1) for di in (0, 1)]
        return np.stack([b.reshape(-1) for b in blocks], axis=1).astype(np.int64)
    idx = partition_index(op.grid, op.window, op.shift)
    if op.pattern == "window_reverse":
        idx = np.argsort(idx)
    return idx.astype(np.int64)[:, None]


def gather(x, index):
    """``[B,T,C] -> [B,T',k*C]`` by ``index`` [T', k] (numpy arrays or torch tensors)."""
    b, _, c = x.shape
    t, k = index.shape
    y = x[:, index.reshape(-1)]
    return y.reshape(b, t, k * c)


def split_window_heads(op, x):
    """``[B, W*N, n*H*d] -> n x [B, W*H, N, d]`` (torch or numpy arrays; W = 1: timm's split)."""
    b, t, c = x.shape
    n, h, w = len(op.outputs), op.num_heads, op.windows
    parts = x.reshape(b, w, t // w, n, h, c // (n * h))
    parts = parts.permute(3, 0, 1, 4, 2, 5) if hasattr(parts, "permute") else parts.transpose(3, 0, 1, 4, 2, 5)
    parts = parts.reshape(n, b, w * h, t // w, c // (n * h))
    return tuple(parts[i] for i in range(n))


def merge_window_heads(op, x):
    """``[B, W*H, N, d] -> [B, W*N, H*d]`` (torch or numpy arrays)."""
    b, wh, t, d = x.shape
    w = op.windows
    y = x.reshape(b, w, wh // w, t, d)
    y = y.permute(0, 1, 3, 2, 4) if hasattr(y, "permute") else y.transpose(0, 1, 3, 2, 4)
    return y.reshape(b, w * t, (wh // w) * d)


def masked_pairs(mask: np.ndarray) -> np.ndarray:
    """timm's float mask (0 / -100) [W,N,N] -> bool, True where the pair is masked."""
    return np.asarray(mask) != 0


def window_scores(acc, bias_q, masked, mask_add: int = 0):
    """Integer Swin scores on the ``q k^T`` accumulator scale (Python operators:
    numpy and torch alike; ``acc``, ``bias_q``, ``masked`` broadcast to
    ``[B, W, H, N, N]``, ``masked`` 0/1 integers)::

        s = saturate(acc + bias_q [+ masked * mask_add], int32)
        out = s                         if mask_add != 0  (additive mask, timm's -100 on the score scale)
        out = masked ? ACC_MIN : s      otherwise         (the minimum code: the softmax gives 0)
    """
    s = saturate(acc + bias_q + masked * mask_add, ACC_MIN, ACC_MAX)
    if mask_add:
        return s
    return s + masked * (ACC_MIN - s)
