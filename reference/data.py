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
  model's own timm eval transform. Images over ``max_pixels`` (header size,
  ``--max-image-pixels``) are refused before decoding; 16-bit and float images
  are scaled to 8 bits (`_to_8bit`), palette and CMYK images converted through
  RGB; symlinks are followed only inside the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform, resolve_data_config

from reference.digits_split import (  # noqa: F401  (re-exported: the training scripts read them here)
    CALIB_SEED, CALIB_SIZE, DIGITS_INPUT_SIZE, DIGITS_MAX_PIXEL, DIGITS_SPLIT_SEED, DIGITS_SPLITS,
    DIGITS_TEST_FRACTION, digits_pixels,
)
from reference.models import default_model_config, model_input_config
from simulator.errors import InputError
from simulator.progress import track

__all__ = [
    "DIGITS_SPLITS",
    "dataset_size",
    "digits_pixels",
    "load_dataset",
    "load_digits",
    "load_image_folder",
]

LIMIT_SEED = 0
MAX_IMAGE_PIXELS = 89_478_485   # default of --max-image-pixels: PIL's own warning threshold (~0.25 GB RGB)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


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
        inside = root.resolve()
        for entry in root.iterdir():
            _check_link(entry, inside)
        class_names = sorted(
            entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
        )
        if not class_names:
            raise InputError(f"{root}: no class sub-directories (expected <root>/<class>/<image>)")
        samples = []
        for class_index, class_name in enumerate(class_names):
            for image_path in sorted((root / class_name).rglob("*")):
                _check_link(image_path, inside)
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


def _to_8bit(image: Image.Image, image_path: Path) -> Image.Image:
    """High-bit-depth and float images as 8-bit "L", scaled (not saturated) to the full range.

    16-bit samples (modes I;16*, and I from PNG/TIFF): ``round(v * 255 / 65535)``;
    32-bit integer images must hold 16-bit values. Float images (mode F, e.g. a
    float TIFF) must be finite and in [0, 1]: ``round(v * 255)``. Anything
    else is refused naming the file rather than clipped.
    """
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise InputError(f"{image_path}: float image with non-finite pixels (NaN or inf); expected values in [0, 1]")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise InputError(f"{image_path}: float image with values in [{arr.min():.6g}, {arr.max():.6g}]; "
                             "expected values in [0, 1]")
        return Image.fromarray(np.floor(arr * 255 + 0.5).astype(np.uint8), "L")
    arr = np.asarray(image).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise InputError(f"{image_path}: {image.mode} image with values in [{arr.min()}, {arr.max()}]; "
                         "expected 16-bit samples in [0, 65535]")
    return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), "L")


def _convert(image: Image.Image, pil_mode: str, image_path: Path) -> Image.Image:
    """The model's colour mode: 16-bit/float scaled to 8 bits, palette and CMYK through RGB(A), alpha dropped."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image, image_path)
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    return image.convert(pil_mode)


def _check_link(path: Path, inside: Path) -> None:
    """Symlinks are followed only within the image folder; a dangling one is an error, not a skip."""
    if not path.is_symlink():
        return
    target = path.resolve()
    if not target.exists():
        raise InputError(f"{path}: dangling symlink (its target does not exist)")
    if not target.is_relative_to(inside):
        raise InputError(f"{path}: symlink to {target}, outside the image folder {inside}; "
                         "copy the file into the folder or point --data at a folder that holds it")


def _read_image(image_path: Path, pil_mode: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode one image in the model's colour mode, naming the file if it is bad.

    The size is checked against ``max_pixels`` from the header, before any
    pixel is decoded (PIL's own decompression-bomb check is replaced by this
    one, so its warning and its traceback never appear).
    """
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(image_path) as image:
            w, h = image.size
            if w * h > max_pixels:
                raise InputError(f"{image_path}: {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                                 "(raise it with --max-image-pixels)")
            image.load()
            return _convert(image, pil_mode, image_path)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{image_path}: cannot read image ({reason})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def load_image_folder(
    path: str | os.PathLike, model: torch.nn.Module, limit: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS, rows: slice | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load an ImageFolder tree with the model's timm eval transform.

    Returns float32 images [N,C,H,W], int64 labels (index into the sorted class
    names) and the class names. Order is sorted by class then path; ``limit``
    keeps the first N of a seed-0 shuffle so a small limit still spans classes;
    ``rows`` then keeps a contiguous slice of those (one shard of a sharded
    evaluation, `simulator.dask_evaluation`).
    """
    root = Path(path)
    samples, class_names = _find_class_images(root)
    samples = [samples[i] for i in _limited_indices(len(samples), limit)[rows or slice(None)]]
    data_config = resolve_data_config({}, model=model)
    channels = data_config["input_size"][0]
    pil_modes = {1: "L", 3: "RGB"}
    if channels not in pil_modes:
        raise InputError(f"model input_size {data_config['input_size']}: expected 1 or 3 channels")
    transform = create_transform(**data_config, is_training=False)
    images = np.empty((len(samples), *data_config["input_size"]), dtype=np.float32)
    progress = track(samples, f"loading {root.name}", unit="img")
    for row, (image_path, _) in enumerate(progress):
        images[row] = transform(_read_image(image_path, pil_modes[channels], max_pixels)).numpy()
    labels = np.array([class_index for _, class_index in samples], dtype=np.int64)
    return images, labels, class_names


def dataset_size(spec: str | None, split: str = "test", limit: int | None = None) -> int:
    """How many images `load_dataset` returns for ``spec``/``split``/``limit``, without decoding any."""
    if spec == "clutter":
        from reference.cluttered_digits import SPLIT_SIZES

        return len(_limited_indices(SPLIT_SIZES["test"], limit)) if split == "test" else (
            SPLIT_SIZES[split] if limit is None else limit)
    if spec is None or spec == "digits":
        if split == "calib" and limit is not None and limit > CALIB_SIZE:
            split = "train"
        return len(_limited_indices(len(digits_pixels(split)[1]), limit))
    return len(_limited_indices(len(_find_class_images(Path(spec))[0]), limit))


def _load_clutter(model: torch.nn.Module, split: str, limit: int | None, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A cluttered-digits split (`reference.cluttered_digits`) normalised with the model's mean/std;
    ``limit`` images (a calib request beyond the split's 128 generates that many)."""
    from reference.cluttered_digits import CANVAS, SPLIT_SIZES, cluttered_digits

    config = model_input_config(model)
    if tuple(config["input_size"]) != (1, CANVAS, CANVAS):
        raise InputError(f"dataset 'clutter' has 1x{CANVAS}x{CANVAS} grayscale images but the model expects "
                         f"input_size {tuple(config['input_size'])}; use --model vit_clutter or pass an ImageFolder")
    if split == "test":          # a fixed 1000-image split; --images keeps a seed-0 subset, as for digits
        pixels, labels = cluttered_digits("test")
        keep = _limited_indices(len(labels), limit)[rows or slice(None)]
        pixels, labels = pixels[keep], labels[keep]
    else:                        # generated: any count is as deterministic as the default one
        pixels, labels = cluttered_digits(split, SPLIT_SIZES[split] if limit is None else limit)
        pixels, labels = pixels[rows or slice(None)], labels[rows or slice(None)]
    mean, std = np.float32(config["mean"][0]), np.float32(config["std"][0])
    return ((pixels - mean) / std).astype(np.float32), labels


def load_dataset(
    spec: str | None, model: torch.nn.Module, split: str = "test", limit: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS, rows: slice | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load images and labels for `model`: spec None/"digits" -> a digits split, "clutter" -> a
    cluttered-digits split (the ``vit_clutter`` model's), else an ImageFolder path.

    ``split`` applies to digits only (an ImageFolder is used as a whole); a
    "calib" request for more than the calib split's 128 images is served from
    the whole train split (labels unused), e.g. the apq recipe's risk control;
    ``limit`` keeps the first N of a seed-0 shuffle for either source, ``rows`` a contiguous slice of
    what that leaves (a shard: its images are those of the same positions in the whole set).
    """
    if spec == "clutter":
        return _load_clutter(model, split, limit, rows)
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
        keep = _limited_indices(len(labels), limit)[rows or slice(None)]
        return ((pixels[keep] - mean) / std).astype(np.float32), labels[keep]
    images, labels, _ = load_image_folder(spec, model, limit=limit, max_pixels=max_pixels, rows=rows)
    return images, labels
