"""The apq recipe: params validation, exit heads (distillation, files), the search pieces
(allocation under a budget, Clopper-Pearson bound, fixed-sequence walk, Pareto set) and a
whole build on a random ViT whose result runs bit-exact in both executors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.apq_search import allocate_bits, clopper_pearson_upper, fixed_sequence_walk, pareto_front
from reference.exits import (ExitHeads, class_tokens, fit_exit_heads, float_exit_outputs, load_exit_heads,
                             save_exit_heads, DEFAULT_EXITS_PATH)
from reference.recipes import quantize
from reference.recipes.apq import CONF_BITS, parse_params, threshold_code
from simulator.errors import InputError
from strategies import build_vit, random_images

SMALL = dict(depth=3, num_heads=2, embed_dim=16, mlp_ratio=2, img_size=8, patch_size=4, in_chans=1,
             num_classes=4, init_values=None)


@pytest.mark.parametrize("params, field", [
    ({"allocation": "greedy"}, "allocation"), ({"threshold": 1.5}, "threshold"),
    ({"risk_bound": 0}, "risk_bound"), ({"bit_candidates": [[8, 9]]}, "bit_candidates"),
    ({"bop_budgets": []}, "bop_budgets"), ({"thresholds": 0.9}, "thresholds"),
    ({"exits_every": 0}, "exits_every"), ({"confidence": True}, "confidence"),
])
def test_bad_params_name_the_field(params, field):
    with pytest.raises(InputError, match=rf"^r\.yaml: params\.{field}: "):
        parse_params(params, where="r.yaml")


def test_params_defaults_and_normalisation():
    p = parse_params({"threshold_grid": [0.5, 0.9], "bit_candidates": [[8, 8], [4, 4]]})
    assert p.threshold_grid == (0.9, 0.5) and p.bit_candidates == ((8, 8), (4, 4))
    with pytest.raises(Exception):
        p.risk_bound = 0.5    # frozen


def test_threshold_codes():
    top = 1 << CONF_BITS
    assert threshold_code(1.0) == top and threshold_code(0.5) == top // 2 and threshold_code(0.9) == 3687


@settings(max_examples=40)
@given(k=st.integers(0, 50), n=st.integers(1, 50), delta=st.sampled_from([0.01, 0.05, 0.1]))
def test_clopper_pearson_covers_the_rate(k, n, delta):
    k = min(k, n)
    u = clopper_pearson_upper(k, n, delta)
    assert k / n <= u <= 1.0
    if k < n:   # at the bound, seeing <= k events has probability exactly delta
        assert scipy.stats.binom.cdf(k, n, u) == pytest.approx(delta, rel=1e-6)


def test_fixed_sequence_walk_stops_at_first_failure():
    assert fixed_sequence_walk([0, 1, 9, 0], 100, 0.1, 0.05) == 2
    assert fixed_sequence_walk([20], 100, 0.1, 0.05) == 0


@settings(max_examples=40)
@given(depth=st.integers(1, 4), seed=st.integers(0, 1000), frac=st.floats(0.0, 1.0))
def test_allocation_respects_budget_and_is_optimal_when_greedy_is_exact(depth, seed, frac):
    rng = np.random.default_rng(seed)
    cost = np.sort(rng.uniform(1, 10, (depth, 3)), axis=1)[:, ::-1]
    sens = np.sort(rng.uniform(0, 1, (depth, 3)), axis=1)
    sens[:, 0] = 0
    exp = rng.uniform(0, 1, depth)
    lo, hi = exp @ cost[:, -1], exp @ cost[:, 0]
    budget = lo + frac * (hi - lo)
    choice = allocate_bits(exp, sens, cost, budget)
    assert choice is not None
    assert exp @ cost[np.arange(depth), choice] <= budget * (1 + 1e-9)
    assert allocate_bits(exp, sens, cost, lo * 0.99 - 1e-9) is None or lo == 0


def test_pareto_front_keeps_only_undominated():
    pts = [{"agreement": a, "mean_bops": b} for a, b in [(0.9, 1), (0.95, 2), (0.93, 3), (1.0, 4), (0.99, 5)]]
    assert [(p["agreement"], p["mean_bops"]) for p in pareto_front(pts)] == [(0.9, 1), (0.95, 2), (1.0, 4)]


def test_distilled_heads_follow_the_final_head_and_round_trip(tmp_path):
    model = build_vit(SMALL, seed=1)
    calib = random_images(SMALL, 32, seed=2)
    toks, final = class_tokens(model, calib)
    heads = ExitHeads.like_final(model, (0, 1))
    before = [torch.nn.functional.kl_div(o.log_softmax(-1), final.log_softmax(-1), log_target=True,
                                         reduction="batchmean").item() for o in heads([toks[0], toks[1]])]
    fit_exit_heads(heads, [toks[0], toks[1]], final, "kl", epochs=200)
    after = [torch.nn.functional.kl_div(o.log_softmax(-1), final.log_softmax(-1), log_target=True,
                                        reduction="batchmean").item() for o in heads([toks[0], toks[1]])]
    assert all(a < 0.5 * b for a, b in zip(after, before)), (before, after)
    path = tmp_path / "h.safetensors"
    save_exit_heads(heads, path, {"note": "test"})
    again = load_exit_heads(path, model)
    assert again.after == (0, 1)
    c1, _, _ = float_exit_outputs(model, heads, calib)
    c2, _, _ = float_exit_outputs(model, again, calib)
    assert np.array_equal(c1, c2)
    with pytest.raises(InputError, match="exit-head file not found"):
        load_exit_heads(tmp_path / "nope.safetensors", model)
    (tmp_path / "bad.safetensors").write_bytes(b"xx")
    with pytest.raises(InputError, match="not an exit-head file"):
        load_exit_heads(tmp_path / "bad.safetensors", model)


def test_bundled_heads_fit_the_default_model():
    from reference.models import load_model

    model = load_model()
    heads = load_exit_heads(DEFAULT_EXITS_PATH, model)
    assert heads.after == (1, 3) and DEFAULT_EXITS_PATH.stat().st_size < 20_000


@pytest.mark.slow   # end to end; still run by `python -m pytest -q` (.ci/run)
def test_apq_build_on_a_random_vit_is_bit_exact():
    from reference.fakequant_ops import GraphFakeQuantExecutor
    from simulator.int_ops import GraphIntegerExecutor
    from simulator.results import first_mismatch

    model = build_vit(SMALL, seed=5)
    calib = random_images(SMALL, 40, seed=6)
    recipe = {"recipe": "apq", "weight_calibration": "minmax", "act_calibration": "minmax", "calib_images": 40,
              "params": {"exit_heads": "distill", "exits_every": 1, "bit_candidates": [[8, 8], [4, 4]],
                         "bop_budgets": [1.0, 0.5], "threshold_grid": [0.9, 0.6], "risk_bound": 0.5}}
    q = quantize(model, calib, recipe, model_name="rand")
    rep = q.meta["apq"]
    assert [op.after_block for op in q.graph.ops if op.kind == "exit"] == [0, 1] and rep["n_holdout"] == 20
    for pt in rep["pareto"]:
        assert pt["bops_fraction"] <= pt["budget"] + 1e-9 or pt["threshold"] == 1.0
    if rep["certified"]:
        assert rep["chosen"]["upper_bound"] <= 0.5
    x = random_images(SMALL, 5, seed=7)
    rf, ri = GraphFakeQuantExecutor(q).run(x), GraphIntegerExecutor(q).run(x)
    assert first_mismatch(rf.codes, ri.codes) is None and np.array_equal(rf.logits, ri.logits)
    assert np.array_equal(rf.trace.extras["exit_depth"], ri.trace.extras["exit_depth"])
    assert np.array_equal(rf.trace.layer_ran, ri.trace.layer_ran) and rf.trace.layers == ri.trace.layers


@pytest.mark.parametrize("name", ["apq.yaml", "apq_exits_w8a8.yaml", "apq_exits_w4a4.yaml"])
def test_bundled_apq_recipes_load_and_validate(name):
    from pathlib import Path

    from reference.recipes.config import load_recipe

    cfg = load_recipe(Path(__file__).resolve().parents[2] / "configs" / "recipes" / name)
    p = parse_params(cfg.params, where=name)
    assert cfg.recipe == "apq" and p.threshold == "search"
    assert p.allocation == ("apq" if name == "apq.yaml" else "uniform")
