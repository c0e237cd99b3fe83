"""Evaluation and calibration images: the bundled digits set or a user ImageFolder.

Two sources, both returned as plain numpy (float32 images [N, C, H, W] already
normalised for the model, int64 labels) so the numba simulator can read them
without torch:

* ``digits`` -- scikit-learn's bundled 8x8 handwritten digits (offline), cut
  once into a fixed stratified train/test split (1437 / 360 images) plus a
  128-image calibration subset of the train split. Normalisation
  ``(pixel / 16 - mean) / std`` takes mean/std from the default model's JSON
  config, the one place those numbers live at run time.
* an ImageFolder directory (one sub-directory per class), preprocessed with the
  model's own timm eval transform.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import sklearn.datasets
import torch
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split
from timm.data import create_transform, resolve_data_config

from reference.models import default_model_config, model_input_config
from simulator.errors import InputError
from simulator.progress import track

__all__ = [
    "DIGITS_SPLITS",
    "digits_pixels",
    "load_dataset",
    "load_digits",
    "load_image_folder",
]

DIGITS_SPLITS = ("train", "test", "calib")
DIGITS_INPUT_SIZE = (1, 8, 8)
DIGITS_MAX_PIXEL = 16.0  # sklearn digits pixels are integers 0..16
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
CALIB_SIZE = 128
CALIB_SEED = 0
LIMIT_SEED = 0
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


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


def load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return a digits split normalised for the default model: float32 [N,1,8,8], int64 labels."""
    pixels, labels = digits_pixels(split)
    data_config = default_model_config()["data_config"]
    mean = np.float32(data_config["mean"][0])
    std = np.float32(data_config["std"][0])
    return ((pixels - mean) / std).astype(np.float32), labels


def _limited_indices(count: int, limit: int | None) -> np.ndarray:
    """Indices of the items to keep: all, or the first `limit` of a seed-0 shuffle, in original order."""
    if limit is None:
        return np.arange(count)
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
        raise InputError(f"limit: expected a positive integer, got {limit!r}")
    return np.sort(np.random.default_rng(LIMIT_SEED).permutation(count)[:limit])


def _find_class_images(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """List (image path, class index) pairs of an ImageFolder tree, sorted, and the class names."""
    if not root.exists():
        raise InputError(f"{root}: image folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: expected a directory with one sub-directory per class")
    try:
        class_names = sorted(
            entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
        )
        if not class_names:
            raise InputError(f"{root}: no class sub-directories (expected <root>/<class>/<image>)")
        samples = []
        for class_index, class_name in enumerate(class_names):
            for image_path in sorted((root / class_name).rglob("*")):
                if image_path.is_file() and image_path.suffix.lower() in IMAGE_EXTENSIONS:
                    samples.append((image_path, class_index))
    except OSError as error:
        raise InputError(f"{root}: cannot read image folder ({error.strerror or error})") from None
    if not samples:
        raise InputError(
            f"{root}: no image files in the class sub-directories "
            f"(expected extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return samples, class_names


def _read_image(image_path: Path, pil_mode: str) -> Image.Image:
    """Open and fully decode one image in the model's colour mode, naming the file if it is bad."""
    try:
        with Image.open(image_path) as image:
            image.load()
            return image.convert(pil_mode)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise InputError(f"{image_path}: cannot read image ({error})") from None


def load_image_folder(
    path: str | os.PathLike, model: torch.nn.Module, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load an ImageFolder tree with the model's timm eval transform.

    Returns float32 images [N,C,H,W], int64 labels (index into the sorted class
    names) and the class names. Order is sorted by class then path; ``limit``
    keeps the first N of a seed-0 shuffle so a small limit still spans classes.
    """
    root = Path(path)
    samples, class_names = _find_class_images(root)
    samples = [samples[i] for i in _limited_indices(len(samples), limit)]
    data_config = resolve_data_config({}, model=model)
    channels = data_config["input_size"][0]
    pil_modes = {1: "L", 3: "RGB"}
    if channels not in pil_modes:
        raise InputError(f"model input_size {data_config['input_size']}: expected 1 or 3 channels")
    transform = create_transform(**data_config, is_training=False)
    images = np.empty((len(samples), *data_config["input_size"]), dtype=np.float32)
    progress = track(samples, f"loading {root.name}", unit="img")
    for row, (image_path, _) in enumerate(progress):
        images[row] = transform(_read_image(image_path, pil_modes[channels])).numpy()
    labels = np.array([class_index for _, class_index in samples], dtype=np.int64)
    return images, labels, class_names


def load_dataset(
    spec: str | None, model: torch.nn.Module, split: str = "test", limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load images and labels for `model`: spec None/"digits" -> a digits split, else an ImageFolder path.

    ``split`` applies to digits only (an ImageFolder is used as a whole); a
    "calib" request for more than the calib split's 128 images is served from
    the whole train split (labels unused), e.g. the apq recipe's risk control;
    ``limit`` keeps the first N of a seed-0 shuffle for either source.
    """
    if spec is None or spec == "digits":
        input_size = tuple(model_input_config(model)["input_size"])
        if input_size != DIGITS_INPUT_SIZE:
            raise InputError(
                f"dataset 'digits' has 1x8x8 grayscale images but the model expects input_size "
                f"{input_size}; use the default model 'vit_digits' or pass an ImageFolder path"
            )
        if split == "calib" and limit is not None and limit > CALIB_SIZE:
            split = "train"   # more calibration images than the calib split holds: the whole train split
        pixels, labels = digits_pixels(split)
        config = model_input_config(model)     # the model's mean/std (--mean/--std), the JSON's by default
        mean, std = np.float32(config["mean"][0]), np.float32(config["std"][0])
        keep = _limited_indices(len(labels), limit)
        return ((pixels[keep] - mean) / std).astype(np.float32), labels[keep]
    images, labels, _ = load_image_folder(spec, model, limit=limit)
    return images, labels
