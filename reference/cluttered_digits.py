"""Cluttered digits: scikit-learn's 8x8 digits placed on a 56x56 canvas with distractors.

The task of the second bundled model (issue 14): 56 px / patch 4 gives 196
patches + the class token = 197 tokens, the token count of DeiT at 224 px /
patch 16, so attention spans as many tokens as in the models the papers
quantize. Each image holds ONE target digit (its label) near the centre, on a
canvas with clutter the model must learn to ignore:

* the target: a digits image (pixels 0..16 scaled to [0, 1]) zoomed by a
  factor in ``TARGET_ZOOM`` = [5, 6] (40-48 px; bilinear,
  ``scipy.ndimage.zoom(order=1)``), centred with a uniform offset of up to
  ``TARGET_JITTER`` = 4 px per axis (clipped to the canvas), intensity in
  [0.8, 1];
* ``FRAGMENTS`` distractor fragments: 4x4 crops of other digits of the same
  split, zoomed by ``FRAGMENT_ZOOM`` = [2, 3.5], placed uniformly (they may
  cover the target), intensity in [0.3, 0.7], so clutter has the target's
  stroke statistics but no whole digit;
* ``STROKES`` random straight strokes (1 px, intensity in [0.3, 0.6]);
* composed with ``max`` (strokes do not add up), then Gaussian pixel noise
  (sigma ``NOISE``) clipped to [0, 1].

Why near the centre and not anywhere: a first version placed a 16-28 px
target uniformly over the canvas; a DeiT-Tiny-width ViT stayed at chance for
7 epochs (~300 steps) and small probes learned nothing in 400 steps on 2 CPU
cores, so the translation-invariance a ViT must learn from scratch did not fit
the 30-minute training budget. With the large, roughly centred target the
model still attends over 197 tokens, and the clutter overlaps the digit.

Deterministic: image ``i`` of a split depends only on (split, seed, i) -- a
`numpy.random.SeedSequence` spawn per image -- so any prefix or subset is
reproducible, and the training script draws a fresh epoch by changing the
seed. The base digits are the fixed train/test split of `reference.digits_split`:
test canvases never contain (target or fragment) a train digit.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom

from reference.digits_split import digits_pixels
from simulator.errors import InputError

__all__ = ["CANVAS", "SPLIT_SIZES", "SPLIT_SEEDS", "cluttered_digits", "render"]

CANVAS = 56
TARGET_ZOOM = (5.0, 6.0)
TARGET_JITTER = 4
FRAGMENT_ZOOM = (2.0, 3.5)
FRAGMENTS = 6
FRAGMENT_SIZE = 4
STROKES = 3
NOISE = 0.04
#: default image count and seed of each split (train: one epoch's worth; the script reseeds per epoch)
SPLIT_SIZES = {"train": 1437, "test": 1000, "calib": 128}
SPLIT_SEEDS = {"train": 0, "test": 1, "calib": 2}
_BASE_SPLIT = {"train": "train", "test": "test", "calib": "train"}


def _place(canvas: np.ndarray, patch: np.ndarray, rng: np.random.Generator) -> None:
    """``canvas = max(canvas, patch)`` at a uniform position where ``patch`` fits whole."""
    h, w = patch.shape
    y = rng.integers(0, CANVAS - h + 1)
    x = rng.integers(0, CANVAS - w + 1)
    np.maximum(canvas[y:y + h, x:x + w], patch, out=canvas[y:y + h, x:x + w])


def _place_near_centre(canvas: np.ndarray, patch: np.ndarray, rng: np.random.Generator) -> None:
    """``canvas = max(canvas, patch)`` centred, offset by up to ``TARGET_JITTER`` px per axis (clipped)."""
    h, w = patch.shape
    dy, dx = rng.integers(-TARGET_JITTER, TARGET_JITTER + 1, size=2)
    y = int(np.clip((CANVAS - h) // 2 + dy, 0, CANVAS - h))
    x = int(np.clip((CANVAS - w) // 2 + dx, 0, CANVAS - w))
    np.maximum(canvas[y:y + h, x:x + w], patch, out=canvas[y:y + h, x:x + w])


def _stroke(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """A 1 px straight segment of random ends and intensity, sampled at 2 points per pixel of length."""
    (y0, x0), (y1, x1) = rng.uniform(0, CANVAS - 1, size=(2, 2))
    steps = int(2 * max(abs(y1 - y0), abs(x1 - x0))) + 2
    t = np.linspace(0.0, 1.0, steps)
    ys = np.rint(y0 + t * (y1 - y0)).astype(np.int64)
    xs = np.rint(x0 + t * (x1 - x0)).astype(np.int64)
    np.maximum.at(canvas, (ys, xs), rng.uniform(0.3, 0.6))


def render(target: np.ndarray, others: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One canvas [CANVAS, CANVAS] float32 in [0, 1]: ``target`` (8x8 in [0, 1]) among clutter cut
    from ``others`` ([N, 8, 8]) -- the module docstring's recipe."""
    canvas = np.zeros((CANVAS, CANVAS), np.float64)
    for _ in range(FRAGMENTS):
        src = others[rng.integers(0, len(others))]
        y, x = rng.integers(0, 8 - FRAGMENT_SIZE + 1, size=2)
        piece = zoom(src[y:y + FRAGMENT_SIZE, x:x + FRAGMENT_SIZE], rng.uniform(*FRAGMENT_ZOOM), order=1)
        _place(canvas, np.clip(piece, 0, 1) * rng.uniform(0.3, 0.7), rng)
    for _ in range(STROKES):
        _stroke(canvas, rng)
    digit = np.clip(zoom(target, rng.uniform(*TARGET_ZOOM), order=1), 0, 1) * rng.uniform(0.8, 1.0)
    _place_near_centre(canvas, digit, rng)
    canvas += rng.normal(0.0, NOISE, canvas.shape)
    return np.clip(canvas, 0.0, 1.0).astype(np.float32)


def cluttered_digits(split: str, count: int | None = None, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` canvases of ``split`` (train/test/calib): float32 [N, 1, 56, 56] in [0, 1] and int64 labels.

    Image ``i``'s target is base digit ``i mod len(base)`` of the split (so
    classes stay balanced as in the digits split); ``seed`` defaults to the
    split's own (`SPLIT_SEEDS`), ``count`` to `SPLIT_SIZES`.
    """
    if split not in SPLIT_SIZES:
        raise InputError(f"cluttered digits: unknown split {split!r}; expected one of {', '.join(SPLIT_SIZES)}")
    count = SPLIT_SIZES[split] if count is None else count
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count <= 0:
        raise InputError(f"cluttered digits: count: expected a positive integer, got {count!r}")
    pixels, labels = digits_pixels(_BASE_SPLIT[split])
    base = pixels[:, 0].astype(np.float64)
    order = np.arange(count) % len(base)
    if split == "calib":       # calibration targets: a seeded choice of train digits, not the first ones
        order = np.random.default_rng(SPLIT_SEEDS["calib"]).permutation(len(base))[order]
    streams = np.random.SeedSequence([SPLIT_SEEDS[split] if seed is None else seed, len(split)]).spawn(count)
    images = np.stack([render(base[j], base, np.random.default_rng(s)) for j, s in zip(order, streams)])
    return images[:, None], labels[order].copy()
