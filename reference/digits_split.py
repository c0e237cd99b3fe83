"""The fixed split of scikit-learn's 8x8 digits (train / test / calib), unnormalised.

Shared by the digits data of the bundled ``vit_digits`` model (`reference.data`)
and the cluttered canvases of ``vit_clutter`` (`reference.cluttered_digits`),
so test canvases never hold a train digit.

scikit-learn is not imported (it and the scipy it pulls in cost ~1 s of every
``simulate``'s start-up): the pixels are read from the CSV that ships inside
scikit-learn's wheel (``sklearn/datasets/data/digits.csv.gz``, the file
``sklearn.datasets.load_digits`` parses), located without importing the
package, and the split's order is stored in ``default_model/digits_split.json``
(tests/reference/test_data.py checks both against scikit-learn itself).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from simulator.errors import InputError

__all__ = ["DIGITS_SPLITS", "digits_pixels"]

DIGITS_SPLITS = ("train", "test", "calib")
DIGITS_INPUT_SIZE = (1, 8, 8)
DIGITS_MAX_PIXEL = 16.0  # sklearn digits pixels are integers 0..16
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
CALIB_SIZE = 128
CALIB_SEED = 0
SPLIT_FILE = Path(__file__).resolve().parent / "default_model" / "digits_split.json"


def digits_csv() -> Path:
    """scikit-learn's packaged ``digits.csv.gz`` (1797 rows: 64 pixels 0..16, then the label)."""
    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    raise InputError("digits: scikit-learn's datasets/data/digits.csv.gz not found; expected scikit-learn installed "
                     "(pip install scikit-learn)")


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] float64 0..16, labels int64): what ``sklearn.datasets.load_digits`` returns."""
    raw = np.loadtxt(digits_csv(), delimiter=",")
    return raw[:, :-1].reshape(-1, 8, 8), raw[:, -1].astype(np.int64)


def digits_pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return one digits split as float32 [N,1,8,8] pixels scaled to [0, 1] and int64 labels.

    The split is fixed: ``train_test_split(test_size=0.2, stratify=y,
    random_state=0)`` (its order stored, see the module docstring); "calib" is the first 128 images of a seed-0 permutation
    of "train". Unnormalised, so the training script can choose mean/std.
    """
    if split not in DIGITS_SPLITS:
        raise InputError(f"digits: unknown split {split!r}; expected one of {', '.join(DIGITS_SPLITS)}")
    images, labels = load_digits_arrays()
    pixels = (images / DIGITS_MAX_PIXEL).astype(np.float32)[:, None, :, :]
    order = json.loads(SPLIT_FILE.read_text())
    train, test = np.asarray(order["train"]), np.asarray(order["test"])
    train_x, test_x, train_y, test_y = pixels[train], pixels[test], labels[train], labels[test]
    if split == "test":
        return test_x, test_y
    if split == "train":
        return train_x, train_y
    calib_index = np.random.default_rng(CALIB_SEED).permutation(len(train_x))[:CALIB_SIZE]
    return train_x[calib_index], train_y[calib_index]
