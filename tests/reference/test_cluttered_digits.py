"""The cluttered-digits task of the bundled ``vit_clutter`` model: deterministic, prefix-stable, balanced."""

from __future__ import annotations

import numpy as np
import pytest

from reference.cluttered_digits import CANVAS, cluttered_digits
from reference.digits_split import digits_pixels
from simulator.errors import InputError


def test_same_seed_same_canvases_and_prefixes_are_stable():
    a, la = cluttered_digits("test", 12)
    b, lb = cluttered_digits("test", 30)
    assert a.shape == (12, 1, CANVAS, CANVAS) and a.dtype == np.float32
    assert np.array_equal(a, b[:12]) and np.array_equal(la, lb[:12])
    c, _ = cluttered_digits("train", 12, seed=1001)
    d, _ = cluttered_digits("train", 12, seed=1002)
    assert not np.array_equal(c, d)                  # a new epoch draws new canvases


def test_labels_follow_the_base_split_and_pixels_stay_in_range():
    x, y = cluttered_digits("test", 400)
    _, base = digits_pixels("test")
    assert np.array_equal(y[:len(base)], base) and np.array_equal(y[len(base):], base[:400 - len(base)])
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(y, minlength=10).min() >= 30              # stratified base split: every class present
    assert (x.reshape(len(x), -1).max(1) >= 0.8 - 4 * 0.04).all()   # the target digit is drawn at >= 0.8


def test_the_target_digit_is_in_the_canvas():
    """The canvas minus clutter: where the zoomed target lies, the canvas is at least its intensity."""
    x, _ = cluttered_digits("calib", 8)
    assert x.shape == (8, 1, CANVAS, CANVAS) and (x > 0.5).sum(axis=(1, 2, 3)).min() > 20


@pytest.mark.parametrize("split,count", [("val", None), ("test", 0), ("test", True)])
def test_bad_requests_are_input_errors(split, count):
    with pytest.raises(InputError):
        cluttered_digits(split, count)
