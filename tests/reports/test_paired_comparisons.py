"""The sweep report's paired tests: which baseline each run is compared with, and the McNemar counts."""

import numpy as np
import pytest

from reports.review import paired_rows
from simulator.significance import mcnemar_exact


def _run(label, recipe, bits, correct, model="vit_digits"):
    return {"label": label, "model": {"name": model, "checkpoint": None, "data": "digits"},
            "recipe": {"recipe": recipe, "w_bits": bits, "a_bits": bits}, "images": len(correct),
            "top1": {"simulator": 100 * float(np.mean(correct))},
            "correct": {"simulator": np.packbits(np.asarray(correct, bool)).tobytes().hex()}}


def test_each_run_meets_the_best_static_run_at_its_bits():
    rng = np.random.default_rng(0)
    n = 203                                         # not a multiple of 8: the packed tail is ignored
    s8_fixed, s8_cal = rng.random(n) < 0.80, rng.random(n) < 0.90
    igq8, s4, igq4 = rng.random(n) < 0.95, rng.random(n) < 0.5, rng.random(n) < 0.7
    runs = [_run("s8_fixed", "static", 8, s8_fixed), _run("s8_cal", "static", 8, s8_cal),
            _run("igq8", "igq", 8, igq8), _run("s4", "static", 4, s4), _run("igq4", "igq", 4, igq4),
            _run("other", "igq", 4, igq4, model="vit_clutter")]
    rows = {r["label"]: r for r in paired_rows(runs)}
    assert set(rows) == {"s8_fixed", "igq8", "s4", "igq4"}   # the model's best static run and a model's only run are not
    assert rows["s8_fixed"]["baseline"] == rows["igq8"]["baseline"] == "s8_cal"
    assert rows["s4"]["baseline"] == "s8_cal"                # a static run: the best static run at any bits
    assert rows["igq4"]["baseline"] == "s4"
    b, c = int((igq4 & ~s4).sum()), int((~igq4 & s4).sum())
    assert (rows["igq4"]["a_only"], rows["igq4"]["b_only"]) == (b, c)
    assert rows["igq4"]["p_value"] == pytest.approx(mcnemar_exact(b, c).p_value, rel=1e-12)
    assert rows["igq4"]["significant"] == (rows["igq4"]["p_value"] < 0.05)


def test_records_without_per_image_results_are_left_out():
    a = _run("a", "static", 8, [True, False, True])
    b = _run("b", "igq", 8, [True, True, True])
    del b["correct"]
    assert paired_rows([a, b]) == []
