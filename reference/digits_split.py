"""The fixed split of scikit-learn's 8x8 digits (train / test / calib), unnormalised.

Shared by the digits data of the bundled ``vit_digits`` model (`reference.data`)
and the cluttered canvases of ``vit_clutter`` (`reference.cluttered_digits`),
so test canvases never hold a train digit.
"""

from __future__ import annotations

import numpy as np
import sklearn.datasets
from sklearn.model_selection import train_test_split

from simulator.errors import InputError

__all__ = ["DIGITS_SPLITS", "digits_pixels"]

DIGITS_SPLITS = ("train", "test", "calib")
DIGITS_INPUT_SIZE = (1, 8, 8)
DIGITS_MAX_PIXEL = 16.0  # sklearn digits pixels are integers 0..16
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
CALIB_SIZE = 128
CALIB_SEED = 0


def digits_pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return one digits split as float32 [N,1,8,8] pixels scaled to [0, 1] and int64 labels.

    The split is fixed: ``train_test_split(test_size=0.2, stratify=y,
    random_state=0)``; "calib" is the first 128 images of a seed-0 permutation
    of "train". Unnormalised, so the training script can choose mean/std.
    """
    if split not in DIGITS_SPLITS:
        raise InputError(f"digits: unknown split {split!r}; expected one of {', '.join(DIGITS_SPLITS)}")
    digits = sklearn.datasets.load_digits()
    pixels = (digits.images / DIGITS_MAX_PIXEL).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        pixels, labels, test_size=DIGITS_TEST_FRACTION, stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    if split == "test":
        return test_x, test_y
    if split == "train":
        return train_x, train_y
    calib_index = np.random.default_rng(CALIB_SEED).permutation(len(train_x))[:CALIB_SIZE]
    return train_x[calib_index], train_y[calib_index]
