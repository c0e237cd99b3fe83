"""Tests for reference.data: the fixed digits splits and ImageFolder loading with its errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from reference.data import load_dataset, load_digits, load_image_folder
from reference.models import load_model
from simulator.errors import InputError


@pytest.fixture(scope="module")
def deit_tiny():
    """A randomly initialised deit_tiny_patch16_224 (no download): 224px RGB preprocessing."""
    return load_model("deit_tiny_patch16_224")


@pytest.fixture(scope="module")
def default_model():
    """The bundled 8x8 default model."""
    return load_model()


def write_image_folder(root, images_per_class=(3, 2, 2), size=(40, 30)):
    """Write a small ImageFolder of solid-colour PNGs; class c has images_per_class[c] images."""
    rng = np.random.default_rng(0)
    for class_index, count in enumerate(images_per_class):
        class_dir = root / f"class_{class_index}"
        class_dir.mkdir(parents=True)
        for image_index in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(class_dir / f"img_{image_index}.png")
    return root


def test_digits_split_sizes_dtypes_and_range():
    sizes = {"train": 1437, "test": 360, "calib": 128}
    for split, size in sizes.items():
        images, labels = load_digits(split)
        assert images.shape == (size, 1, 8, 8) and images.dtype == np.float32
        assert labels.shape == (size,) and labels.dtype == np.int64
        # (pixel/16 - 0.5) / 0.5 maps 0..16 onto -1..1
        assert images.min() == -1.0 and images.max() == 1.0


def test_digits_split_is_scikit_learns_without_importing_it():
    """The stored split order and the CSV reader give exactly what scikit-learn computes."""
    import subprocess
    import sys

    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    from reference.digits_split import DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, digits_pixels, load_digits_arrays

    want = sklearn.datasets.load_digits()
    images, labels = load_digits_arrays()
    assert np.array_equal(images, want.images) and np.array_equal(labels, want.target)
    pixels = (want.images / 16.0).astype(np.float32)[:, None]
    tr_x, te_x, tr_y, te_y = train_test_split(pixels, want.target, test_size=DIGITS_TEST_FRACTION, stratify=want.target,
                                              random_state=DIGITS_SPLIT_SEED)
    for split, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
        got_x, got_y = digits_pixels(split)
        assert np.array_equal(got_x, x) and np.array_equal(got_y, y), split
    code = ("import sys; from reference.digits_split import digits_pixels; digits_pixels('calib'); "
            "print(any(m == 'sklearn' or m.startswith('sklearn.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_digits_split_is_stratified():
    _, train_labels = load_digits("train")
    _, test_labels = load_digits("test")
    train_fraction = np.bincount(train_labels, minlength=10) / len(train_labels)
    test_fraction = np.bincount(test_labels, minlength=10) / len(test_labels)
    np.testing.assert_allclose(train_fraction, test_fraction, atol=0.01)
    assert np.bincount(test_labels, minlength=10).min() >= 35


def test_digits_splits_are_disjoint_and_calib_is_from_train():
    train_images, _ = load_digits("train")
    test_images, _ = load_digits("test")
    calib_images, _ = load_digits("calib")
    train_rows = {row.tobytes() for row in train_images}
    assert all(row.tobytes() in train_rows for row in calib_images)
    # sklearn digits has a few duplicate images; the splits share almost none
    assert sum(row.tobytes() in train_rows for row in test_images) <= 5


def test_digits_are_deterministic():
    for split in ("train", "test", "calib"):
        first_images, first_labels = load_digits(split)
        second_images, second_labels = load_digits(split)
        np.testing.assert_array_equal(first_images, second_images)
        np.testing.assert_array_equal(first_labels, second_labels)
    _, calib_labels = load_digits("calib")
    assert len(np.unique(calib_labels)) == 10


def test_digits_unknown_split():
    with pytest.raises(InputError, match=r"digits: unknown split 'val'; expected one of train, test, calib"):
        load_digits("val")


def test_load_dataset_digits_with_limit(default_model):
    images, labels = load_dataset(None, default_model, split="test", limit=50)
    assert images.shape == (50, 1, 8, 8)
    assert len(np.unique(labels)) == 10
    again_images, _ = load_dataset("digits", default_model, split="test", limit=50)
    np.testing.assert_array_equal(images, again_images)


def test_load_dataset_digits_rejects_224px_model(deit_tiny):
    with pytest.raises(InputError, match=r"'digits' has 1x8x8 grayscale images but the model expects input_size \(3, 224, 224\)"):
        load_dataset("digits", deit_tiny)


def test_bad_limit(default_model):
    with pytest.raises(InputError, match=r"limit: expected a positive integer, got 0"):
        load_dataset(None, default_model, limit=0)


def test_image_folder_loads_with_model_preprocessing(tmp_path, deit_tiny):
    root = write_image_folder(tmp_path / "data")
    images, labels, class_names = load_image_folder(root, deit_tiny)
    assert images.shape == (7, 3, 224, 224) and images.dtype == np.float32
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert class_names == ["class_0", "class_1", "class_2"]
    # ImageNet normalisation: values of uint8 images land roughly in [-2.2, 2.7]
    assert -2.2 <= images.min() < 0 < images.max() <= 2.7
    again, _, _ = load_image_folder(root, deit_tiny)
    np.testing.assert_array_equal(images, again)


def test_image_folder_limit_and_load_dataset(tmp_path, deit_tiny):
    root = write_image_folder(tmp_path / "data")
    full_images, full_labels, _ = load_image_folder(root, deit_tiny)
    images, labels = load_dataset(str(root), deit_tiny, limit=4)
    assert images.shape == (4, 3, 224, 224)
    # the kept images are a subset of the full load, in the same (sorted) order
    kept = [next(i for i in range(len(full_images)) if np.array_equal(full_images[i], image))
            for image in images]
    assert kept == sorted(kept)
    np.testing.assert_array_equal(full_labels[kept], labels)


def test_image_folder_grayscale_model(tmp_path, default_model):
    root = write_image_folder(tmp_path / "data", images_per_class=(1, 1))
    images, labels, _ = load_image_folder(root, default_model)
    assert images.shape == (2, 1, 8, 8)


def test_image_folder_missing(tmp_path, deit_tiny):
    path = tmp_path / "absent"
    with pytest.raises(InputError, match=re.escape(f"{path}: image folder not found")):
        load_image_folder(path, deit_tiny)


def test_image_folder_is_a_file(tmp_path, deit_tiny):
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(InputError, match=re.escape(f"{path}: expected a directory")):
        load_image_folder(path, deit_tiny)


def test_image_folder_without_class_dirs(tmp_path, deit_tiny):
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path}: no class sub-directories")):
        load_image_folder(tmp_path, deit_tiny)


def test_image_folder_without_images(tmp_path, deit_tiny):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path}: no image files")):
        load_image_folder(tmp_path, deit_tiny)


@pytest.mark.parametrize("content", [b"", b"not a png at all", None])
def test_image_folder_corrupt_image_names_the_file(tmp_path, deit_tiny, content):
    root = write_image_folder(tmp_path / "data", images_per_class=(2, 1))
    bad = root / "class_1" / "bad.png"
    if content is None:  # a real PNG cut in half: header fine, pixel data missing
        good = (root / "class_0" / "img_0.png").read_bytes()
        content = good[: len(good) // 2]
    bad.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(f"{bad}: cannot read image")) as caught:
        load_image_folder(root, deit_tiny)
    assert "\n" not in str(caught.value)
