"""The recipes' fast searches (issue 15, item 1): what each shortcut computes, and what it chooses.

* `reference.perturbation_kl`: the second-order logit KL of a perturbation (one float forward and one
  backward per class) is the measured KL to leading order, and quadratic in the perturbation.
* IGQ: `choose_exps` (dynamic programme) = the exhaustive subset search; the allocation's candidate
  quantizers on float tensors (`grouped_values`) = the float-nonlinear executor's grouping rule;
  `site_extra_bops` = the BOPs of whole builds; the linearized allocation is deterministic (rerun,
  1 vs 2 torch threads), pinned on the tiny model, and on a small fixed-seed model its choice has a
  lower measured KL than the measured-sensitivity allocation's (the legacy one; docs/recipes/igq.md).
* APQ: `apq_profiles.BlockProfiles` (prefix-cached block segments, early departure) gives the codes
  of whole-graph integer runs; the linearized search picks the legacy search's configuration on the
  digits case recorded in tests/data/legacy_codes.json, and is deterministic under 1 vs 2 threads.
* TSPTQ: the screened GELU search picks the exhaustive search's candidate on the recorded digits
  cases (tests/reference/test_legacy_golden.py, tsptq_*: codes unchanged).
* Every search reports progress through `simulator.progress` (stderr in the CLI), silenced by
  ``--no-progress``.
No test here measures time (benchmarks/calibration.py does).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from oracles import choose_exps_exhaustive
from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.float_ops import FloatOps
from reference.igq_fakequant import group_quantize_float
from reference.lowering import lower
from reference.perturbation_kl import perturbation_kl
from reference.recipes.config import RecipeConfig, recipe_from_dict
from reference.recipes.igq import choose_exps
from reference.recipes.igq_allocation import logit_kl
from reference.recipes.igq_graph_allocation import grouped_values
from simulator import progress
from simulator.igq import GroupQuantizer
from simulator.walk import walk
from strategies import build_vit, random_images

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "data" / "legacy_codes.json").read_text())
TINY = GOLDEN["models"]["tiny"]
SMALL = GOLDEN["models"]["small"]


@pytest.fixture
def threads():
    """Restore torch's thread count after a test that changes it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# --- the second-order KL ----------------------------------------------------------------------
class _Perturbed(FloatOps):
    """The float op set with ``delta`` added to tensor ``name`` where it is produced."""

    def __init__(self, graph, name, delta):
        super().__init__(graph, torch.float64)
        self.name, self.delta, self.prod = name, torch.as_tensor(delta), graph.producers()[name]

    def layer_norm(self, op, x):
        y = super().layer_norm(op, x)
        return y + self.delta if op is self.prod else y


def test_perturbation_kl_is_the_measured_kl_to_second_order():
    model = build_vit(TINY, seed=4)
    graph, images = lower(model), random_images(TINY, 8, seed=5)
    t = "blocks.0.norm2"
    x = {}
    walk(graph, FloatOps(graph, torch.float64), torch.as_tensor(images, dtype=torch.float64),
         lambda n, v: x.__setitem__(n, v.numpy()) if n == t else None)
    direction = np.random.default_rng(0).standard_normal(x[t].shape)
    ref = walk(graph, FloatOps(graph, torch.float64), torch.as_tensor(images, dtype=torch.float64))[graph.outputs[0]]
    for eps in (1e-3, 3e-3):
        est = perturbation_kl(graph, images, {t: lambda v, s: np.stack([eps * direction[s:s + len(v)],
                                                                      2 * eps * direction[s:s + len(v)]])},
                              dtype=torch.float64)[t]
        got = walk(graph, _Perturbed(graph, t, eps * direction), torch.as_tensor(images, dtype=torch.float64))
        measured = logit_kl(ref.numpy(), got[graph.outputs[0]].numpy())
        assert est[0] == pytest.approx(measured, rel=0.05)          # O(eps^3) terms: a few percent here
        assert est[1] == pytest.approx(4 * est[0], rel=1e-9)         # a quadratic form in the perturbation


# --- IGQ ------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(amax=st.lists(st.floats(1e-4, 50.0), min_size=1, max_size=200), hi=st.sampled_from([1, 7, 31, 127]),
       groups=st.sampled_from([1, 2, 3, 4, 8, 16]), max_exp=st.integers(1, 10))
def test_choose_exps_is_the_exhaustive_search(amax, hi, groups, max_exp):
    """Same exponents, ties included (costs here are exact in float64, so the enumeration's order decides)."""
    assert choose_exps(np.array(amax), 1.0, hi, groups, max_exp).tolist() == \
        choose_exps_exhaustive(np.array(amax), 1.0, hi, groups, max_exp)


@pytest.mark.parametrize("rows", [False, True])
def test_grouped_values_are_the_float_nonlinear_executor_rule(rows):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 10)) * np.exp(rng.standard_normal((1, 1, 10)) * 2)
    for exps, lo, hi in (((0,), -8, 7), ((5, 2, 0), -8, 7), ((9, 4, 1, 0), 0, 15)):
        gq = GroupQuantizer(np.array(exps), 1, 0, lo, hi, 0.37)
        codes, g = group_quantize_float(torch.as_tensor(x), gq, -1 if rows else -2)
        step = (0.37 * 2.0 ** -np.array(exps, dtype=np.float64))[g.numpy()]
        want = codes.numpy() * np.expand_dims(step, -1 if rows else -2)
        assert np.array_equal(grouped_values(x, [gq], rows)[0], want)


def _igq_case(case: str, **params):
    rec = GOLDEN["cases"][case]
    r = dict(rec["recipe"])
    r["params"] = {**r["params"], **params}
    return recipe_from_dict(r)


def test_site_extra_bops_equal_whole_builds():
    from reference.recipes.igq import parse_params
    from reference.recipes.igq_graph import GraphGroupBuilder, grouped_sites, instance_maxima
    from reference.recipes.igq_graph_allocation import graph_total_bops, site_extra_bops
    from reference.recipes.static_graph import calibrate_static
    model, images = build_vit(SMALL, seed=3), random_images(SMALL, 8, seed=3)
    cfg = _igq_case("igq_budget1.5_tiny")
    calib, _, static = calibrate_static(model, images, cfg)
    sites = grouped_sites(static)
    b = GraphGroupBuilder(static, instance_maxima(static.graph, calib, sites), cfg, parse_params(cfg), sites)
    base = dict.fromkeys(sites, 1)
    low = graph_total_bops(b.build(base))
    assert site_extra_bops(b, base, (1, 2, 8)) == {(k, g): graph_total_bops(b.build({**base, k: g})) - low
                                                   for k in sites for g in (1, 2, 8)}


def test_linearized_igq_allocation_is_pinned_and_thread_independent(threads):
    """The tiny model of the recorded igq_budget* cases: at budget 1.02 both modes keep G = 1; at 1.5 the
    linearized allocation (recorded here) differs from the measured one (the legacy choice, pinned in
    test_legacy_golden), whose per-site KLs on 4 images are mostly noise (docs/recipes/igq.md)."""
    model, images = build_vit(TINY, seed=4), random_images(TINY, 6, seed=4)
    got = {}
    for n in (1, 2, 1):
        torch.set_num_threads(n)
        for case in ("igq_budget1.02_tiny", "igq_budget1.5_tiny"):
            qg = reference.quantize(model, images, _igq_case(case))
            got.setdefault(case, []).append((qg.meta["igq_groups"], qg.meta["igq_allocation"]))
    for case, runs in got.items():
        assert all(r == runs[0] for r in runs), case              # rerun and 1 vs 2 threads: identical
    g102, a102 = got["igq_budget1.02_tiny"][0]
    assert set(g102.values()) == {1} and a102["bops"] == a102["static_bops"] == 906752
    g15, a15 = got["igq_budget1.5_tiny"][0]
    assert list(g15.values()) == [4, 4, 4, 2, 4]
    assert a15["bops"] == 1178752 <= 1.5 * a15["static_bops"] and a15["sensitivity"] == "linearized"


@pytest.mark.slow
def test_linearized_igq_allocation_beats_the_measured_one_on_held_out_images():
    """Small fixed-seed model, budget 1.05, 32 allocation images: the measured per-site KLs (one
    fake-quant pass each, 81 passes) are dominated by the other sites' noise; the allocation from
    their second-order estimates has the lower measured KL, on the calibration images and on 64
    held-out ones (both below static G = 1)."""
    model, images = build_vit(SMALL, seed=3), random_images(SMALL, 96, seed=3)
    cal, held = images[:32], images[32:]
    with torch.no_grad():
        ref = {k: model(torch.as_tensor(v)).double().numpy() for k, v in (("cal", cal), ("held", held))}
    kl = {}
    for mode in ("measured", "linearized", "static"):
        p = {"groups": 1} if mode == "static" else {"bop_budget": 1.05, "allocation_images": 32, "sensitivity": mode}
        rc = RecipeConfig(recipe="igq", w_bits=4, a_bits=4, weight_calibration="minmax", act_calibration="minmax",
                          calib_images=32, params=p)
        qg = reference.quantize(model, cal, rc)
        kl[mode] = {k: logit_kl(ref[k], GraphFakeQuantExecutor(qg).run(v, keep_codes=False).logits)
                    for k, v in (("cal", cal), ("held", held))}
    for k in ("cal", "held"):
        assert kl["linearized"][k] < kl["measured"][k] and kl["linearized"][k] < kl["static"][k], kl


# --- APQ ------------------------------------------------------------------------------------------
APQ_SMALL = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=48, depth=3, num_heads=3, num_classes=10,
                 mlp_ratio=4, init_values=None)


def _exit_heads(dim, classes, n, seed):
    rng = np.random.default_rng(seed)
    return [{"norm_weight": 1 + 0.1 * rng.standard_normal(dim), "norm_bias": 0.1 * rng.standard_normal(dim),
             "eps": 1e-6, "head_weight": rng.standard_normal((classes, dim)) * 2 / np.sqrt(dim),
             "head_bias": 0.1 * rng.standard_normal(classes)} for _ in range(n)]


def test_block_profiles_are_whole_graph_runs():
    """Random choices, thresholds and image subsets: predictions, exits taken and final logit codes of the
    prefix-cached block runs equal whole-graph integer runs (every exit computed, never taken)."""
    from reference.recipes.apq_graph import Candidates
    from reference.recipes.apq_graph_search import _WholeRuns
    from reference.recipes.apq_profiles import BlockProfiles, supported
    graph, images = lower(build_vit(APQ_SMALL, seed=3)), random_images(APQ_SMALL, 40, seed=3)
    cfg = RecipeConfig(recipe="apq", calib_images=40)
    c = Candidates(graph, images, cfg, [0, 1], _exit_heads(48, 10, 2, 7), [(8, 8), (4, 8), (4, 4)])
    assert supported(c.egraph, c.depth)
    blocks, whole = BlockProfiles(c, images, batch_size=7), _WholeRuns(c, images)
    rng = np.random.default_rng(0)
    for _ in range(6):
        choice = tuple(int(v) for v in rng.integers(0, 3, c.depth))
        code = int(rng.integers(1000, 4097))
        rows = np.sort(rng.choice(len(images), 25, replace=False))
        a, b = blocks.outcome(choice, code, rows), whole.outcome(choice, code, rows)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert np.array_equal(blocks.final_logit_codes(choice, rows), whole.final_logit_codes(choice, rows))
    first = blocks.outcome((0, 0, 0), 1000, np.arange(40), final=False)[1]
    assert blocks.segments_run < whole.segments_run               # shared prefixes and departures are not rerun
    assert (first < 2).any()                                       # some images leave at code 1000


def _apq_search(model, images, **params):
    rc = recipe_from_dict({"recipe": "apq", "calib_images": len(images), "params": {
        "exit_heads": "distill", "exits_every": 1, "bit_candidates": [[8, 8], [4, 8], [4, 4]],
        "bop_budgets": [1.0, 0.6], "threshold_grid": [0.9, 0.6], "risk_bound": 0.5, **params}})
    qg = reference.quantize(model, images, rc)
    return qg.meta["apq"], qg.meta["block_bits"], qg.meta["exit_threshold_codes"]


def test_apq_search_is_thread_independent(threads):
    model, images = build_vit(APQ_SMALL, seed=3), random_images(APQ_SMALL, 48, seed=3)
    runs = []
    for n in (1, 2):
        torch.set_num_threads(n)
        runs.append(_apq_search(model, images))
    assert runs[0] == runs[1]
    report = runs[0][0]
    assert np.array(report["sensitivity"])[:, 1:].min() > 0 and report["candidates"] > 0


@pytest.mark.slow
def test_linearized_apq_search_picks_the_legacy_configuration(digits):
    """The recorded apq_search_exits case (digits, 128 images): the legacy search's widths and thresholds."""
    model, calib, _ = digits
    rec = GOLDEN["cases"]["apq_search_exits"]
    qg = reference.quantize(model, calib, recipe_from_dict(rec["recipe"]), model_name="vit_digits")
    assert qg.meta["apq_search"]["sensitivity"] == "linearized"
    assert qg.meta["block_bits"] == rec["meta"]["block_bits"]
    assert qg.meta["exit_threshold_codes"] == rec["meta"]["exit_threshold_codes"]
    assert qg.meta["apq"]["chosen"] == rec["meta"]["apq"]["chosen"]


# --- progress ---------------------------------------------------------------------------------
@pytest.fixture
def progress_lines(monkeypatch):
    records = []
    handler = logging.Handler(level=logging.INFO)
    handler.emit = records.append
    log = logging.getLogger("simulator.progress")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    monkeypatch.setattr(progress, "QUIET_BELOW_S", 0.0)
    yield records
    log.removeHandler(handler)
    log.setLevel(level)
    progress.configure(enabled=True)


def test_searches_report_progress_unless_disabled(progress_lines):
    model, images = build_vit(TINY, seed=4), random_images(TINY, 6, seed=4)
    cfg = _igq_case("igq_budget1.5_tiny")
    progress.configure(enabled=False)
    reference.quantize(model, images, cfg)
    assert progress_lines == []
    progress.configure(enabled=True)
    reference.quantize(model, images, cfg)
    lines = [r.getMessage() for r in progress_lines]
    assert any(line.startswith("igq allocation (igq_w4a4): linearized KL of 5 sites x 5 G: 0/4 image")
               for line in lines), lines
    assert any("calibrating on 6 images" in line for line in lines)


def test_sensitivity_params_are_validated():
    from reference.recipes.params import parse_apq, parse_igq
    from simulator.errors import InputError
    with pytest.raises(InputError, match=r"params\.sensitivity: expected one of \['linearized', 'measured'\]"):
        parse_igq({"bop_budget": 1.1, "sensitivity": "exact"})
    with pytest.raises(InputError, match=r"params\.sensitivity: expected 'linearized' or 'measured'"):
        parse_apq({"sensitivity": "fast"})
    with pytest.raises(InputError, match=r"params\.sensitivity_images: expected a positive integer"):
        parse_apq({"sensitivity_images": 0})
    assert parse_igq({"bop_budget": 1.1}).sensitivity == parse_apq({}).sensitivity == "linearized"
