"""APQ/MAQEE early exits + per-block bit-widths on the lowered graph (issue 13, exits port).

* Default model, 64 digits test images: a fixed threshold with images
  leaving at both exits, and mixed per-block widths; both executors
  identical (identity with the removed legacy executor: shipped recipes, a
  search with exits and distilled heads in tests/reference/test_legacy_golden.py).
* Random timm configurations x exits after random blocks x random
  thresholds x random per-block widths: both graph executors identical
  codes, depths and traces; some / none / all images leaving.
* The float walk with exits; save/load; the rewrite's refusals.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from reference.fakequant_ops import GraphFakeQuantExecutor
from reference.float_ops import float_forward
from reference.lowering import lower
from reference.lowering.coverage import perturb_
from reference.recipes.apq_graph import freeze_apq_graph, quantize_apq_graph
from reference.recipes.apq import threshold_code
from reference.recipes.config import RecipeConfig, load_recipe
from simulator import ir
from simulator.graph_exits import add_exits, graph_depth
from simulator.int_ops import GraphIntegerExecutor
from simulator.qgraph import QuantizedGraph
from simulator.results import first_mismatch
from simulator.walk import Leave, walk
from strategies import BIT_WIDTHS, build_vit, lowering_configs, random_images

MIXED = [(8, 8), (4, 4), (4, 8), (6, 6), (8, 8), (4, 4)]


def _run_both(qg, test):
    """Both graph executors on ``test``: identical codes, logits and exit depths; returns the depths."""
    rn, rf = GraphIntegerExecutor(qg).run(test), GraphFakeQuantExecutor(qg).run(test)
    assert first_mismatch(rn.codes, rf.codes) is None and np.array_equal(rn.logits, rf.logits)
    assert np.array_equal(rn.trace.extras["exit_depth"], rf.trace.extras["exit_depth"])
    assert {f"exits.{j}.{n}" for j in range(2) for n in ("norm", "logits", "confidence")} <= set(rn.codes)
    return rn.trace.extras["exit_depth"]


@pytest.mark.slow
@pytest.mark.parametrize("tau, block_bits", [(0.9, [(8, 8)] * 6), (0.8, MIXED)])
def test_fixed_thresholds_and_per_block_bits(digits, tau, block_bits):
    """Images leave at both exits, the widths are the given ones, both executors identical (identity
    with the removed legacy executor on the shipped recipes and a search with exits:
    tests/reference/test_legacy_golden.py)."""
    model, calib, test = digits
    cfg = load_recipe("configs/recipes/apq_exits_w8a8.yaml")
    cfg = replace(cfg, calib_images=512, params={**cfg.params, "threshold": tau})
    calib = calib[:512]
    qg = quantize_apq_graph(model, calib, cfg, "vit_digits", block_bits=block_bits)
    assert qg.meta["exit_threshold_codes"] == [threshold_code(tau)] * 2
    depth = _run_both(qg, test)
    assert set(np.unique(depth)) == {2, 4, 6}          # images leave at both exits, others run to the end
    assert [qg.quantizers[f"blocks.{i}.gelu"].bits for i in range(6)] == [a for _, a in block_bits]
    assert [qg.params[f"blocks.{i}.mlp.fc1"].w_bits for i in range(6)] == [w for w, _ in block_bits]


def _heads(dim, classes, n, seed):
    rng = np.random.default_rng(seed)
    return [{"norm_weight": 1 + 0.1 * rng.standard_normal(dim), "norm_bias": 0.1 * rng.standard_normal(dim),
             "eps": 1e-6, "head_weight": rng.standard_normal((classes, dim)) * 2 / np.sqrt(dim),
             "head_bias": 0.1 * rng.standard_normal(classes)} for _ in range(n)]


def _exit_model(drawn, depth, classes):
    model_cls, kwargs, image_size, seed = drawn
    kwargs = {**kwargs, "depth": depth, "num_classes": classes}
    torch.manual_seed(seed)
    model = model_cls(**kwargs).eval()
    perturb_(model, seed + 1)
    images = np.random.default_rng(seed).standard_normal((14, kwargs["in_chans"], *image_size)).astype(np.float32)
    return lower(model, image_size=image_size), images, kwargs["embed_dim"]


def _check_executors(qg, images):
    ri, rf = GraphIntegerExecutor(qg).run(images), GraphFakeQuantExecutor(qg).run(images)
    assert ri.codes.keys() == rf.codes.keys() == set(qg.graph.tensor_names()[1:])
    assert first_mismatch(ri.codes, rf.codes) is None
    assert np.array_equal(ri.logit_codes, rf.logit_codes) and np.array_equal(ri.logits, rf.logits)
    assert ri.trace.layers == rf.trace.layers and ri.trace.overflows == rf.trace.overflows
    assert np.array_equal(ri.trace.extras["exit_depth"], rf.trace.extras["exit_depth"])
    assert np.array_equal(ri.trace.layer_ran, rf.trace.layer_ran)
    return ri


def _check_departures(qg, r):
    """Exit rule, outputs and zeros of unreached tensors, read off the codes."""
    depth, exits = graph_depth(qg.graph), [o for o in qg.graph.ops if o.kind == "exit"]
    d = r.trace.extras["exit_depth"]
    took = np.full(len(d), -1)
    for j in reversed(range(len(exits))):
        took[d == exits[j].after_block + 1] = j
    for j, e in enumerate(exits):
        conf = r.codes[e.outputs[0]][:, 0]
        reached = d > e.after_block
        fired = reached & (conf >= qg.params[e.name].threshold_q)
        assert np.array_equal(fired, took == j)
        assert not conf[~reached].any()
        assert np.array_equal(r.logit_codes[took == j], r.codes[e.inputs[0]][took == j])
    assert not r.codes[f"blocks.{depth - 1}.x_out"][d < depth].any()   # unreached: zeros


@settings(max_examples=50, deadline=None)
@given(drawn=lowering_configs(), depth=st.integers(2, 3), classes=st.sampled_from([3, 7]), data=st.data())
def test_both_graph_executors_identical_with_random_exits(drawn, depth, classes, data):
    graph, images, dim = _exit_model(drawn, depth, classes)
    assume(any(o.kind == "pool" for o in graph.ops))
    after = sorted(data.draw(st.sets(st.integers(0, depth - 2), min_size=1)))
    taus = data.draw(st.lists(st.sampled_from([0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95, 1.0]),
                              min_size=len(after), max_size=len(after)))
    bits = data.draw(st.lists(st.sampled_from(BIT_WIDTHS), min_size=depth, max_size=depth))
    cfg = RecipeConfig(recipe="apq", w_bits=8, a_bits=8, calib_images=6)
    qg = freeze_apq_graph(graph, images[:6], cfg, after, _heads(dim, classes, len(after), drawn[3]), taus, bits)
    r = _check_executors(qg, images[6:])
    _check_departures(qg, r)
    d = r.trace.extras["exit_depth"]
    event("all images leave" if (d < depth).all() else "no image leaves" if (d == depth).all() else "some leave")


SMALL = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=48, depth=3, num_heads=3, num_classes=10,
             mlp_ratio=4, init_values=None)


@pytest.fixture(scope="module")
def small():
    model = build_vit(SMALL, seed=3)
    images = random_images(SMALL, 40, seed=3)
    return lower(model), images


def _small_qg(small, taus, bits=None):
    graph, images = small
    cfg = RecipeConfig(recipe="apq", calib_images=16)
    return freeze_apq_graph(graph, images[:16], cfg, [0, 1], _heads(48, 10, 2, 7), taus, bits)


def test_none_some_and_all_images_leave(small):
    images = small[1][16:]
    never = _check_executors(_small_qg(small, [1.0, 1.0]), images)
    assert (never.trace.extras["exit_depth"] == 3).all() and never.trace.layer_ran.all()
    conf = never.codes["exits.0.confidence"][:, 0]
    tau = float(np.median(conf)) / 4096 + 1e-9
    some_qg = _small_qg(small, [tau, 1.0])
    some = _check_executors(some_qg, images)
    d = some.trace.extras["exit_depth"]
    assert 0 < (d == 1).sum() < len(d)
    _check_departures(some_qg, some)
    split = GraphIntegerExecutor(some_qg).run(images, batch_size=5)      # departures across batches
    assert first_mismatch(some.codes, split.codes) is None
    assert np.array_equal(split.trace.extras["exit_depth"], d) and np.array_equal(split.logits, some.logits)
    keep = d == 3          # images that stayed: the same codes as without exits
    for name in ("blocks.2.x_out", "logits"):
        assert np.array_equal(some.codes[name][keep], never.codes[name][keep])
    allq = _small_qg(small, [0.0, 0.5])
    every = _check_executors(allq, images)
    assert (every.trace.extras["exit_depth"] == 1).all()
    assert not every.codes["blocks.1.x_out"].any() and not every.codes["exits.1.confidence"].any()
    assert np.array_equal(every.logit_codes, every.codes["exits.0.logits"])
    scale = float(allq.quantizers["exits.0.logits"].scale)
    assert np.array_equal(every.logits, every.logit_codes * scale)
    ran = every.trace.layer_ran
    names = [r.name for r in every.trace.layers]
    assert ran[:, names.index("exits.0.confidence")].all() and not ran[:, names.index("blocks.1.norm1")].any()
    assert every.trace.overflows == {} or all(not k.startswith("blocks.1") for k in every.trace.overflows)


def test_float_walk_with_exits(small):
    graph, images = small
    heads = _heads(48, 10, 2, 7)
    plain = float_forward(graph, images, torch.float64)
    never = float_forward(add_exits(graph, [0, 1], heads, [1.0, 1.0]), images, torch.float64)
    assert torch.equal(plain, never)
    seen = {}
    out = float_forward(add_exits(graph, [0, 1], heads, [0.5, 0.5]), images, torch.float64,
                        keep=seen.__setitem__)
    conf0 = seen["exits.0.confidence"][:, 0]
    left = (conf0 >= 0.5).numpy()
    assert 0 < left.sum() < len(left)
    assert torch.equal(out[left], seen["exits.0.logits"][left])
    stay = (~left) & (seen["exits.1.confidence"][:, 0] < 0.5).numpy()
    assert torch.allclose(out[stay], plain[stay])


def test_save_load_round_trip(small, tmp_path):
    qg = _small_qg(small, [0.4, 0.6], [(8, 8), (4, 4), (6, 6)])
    qg.save(tmp_path / "e.npz")
    back = QuantizedGraph.load(tmp_path / "e.npz")
    assert back.graph.ops == qg.graph.ops and back.meta == qg.meta
    a, b = GraphIntegerExecutor(qg).run(small[1][16:]), GraphIntegerExecutor(back).run(small[1][16:])
    assert first_mismatch(a.codes, b.codes) is None
    assert np.array_equal(a.trace.extras["exit_depth"], b.trace.extras["exit_depth"])


def test_rewrite_refusals(small):
    graph = small[0]
    heads = _heads(48, 10, 2, 7)
    with pytest.raises(ir.GraphError, match=r"exits after blocks \[2, 0\]: expected increasing blocks in \[0, 1\]"):
        add_exits(graph, [2, 0], heads, [1.0, 1.0])
    with pytest.raises(ir.GraphError, match="1 blocks, 2 heads"):
        add_exits(graph, [0], heads, [1.0, 1.0])


class _RowOps:
    """A numpy op set for a hand-made graph: ``exit`` lets rows whose value is >= threshold leave."""

    def linear(self, op, x, residual=None):
        return x + 1 if residual is None else x + residual

    def exit(self, op, x):
        return Leave(x[:, :1], x[:, 0] >= op.threshold)

    head = linear


def test_walk_cuts_the_batch_and_merges_outputs():
    ops = (ir.Linear("a", ("images",), ("a",)), ir.Exit("e", ("a",), ("c",), threshold=3.0),
           ir.Linear("b", ("a",), ("b",)), ir.Exit("f", ("b",), ("d",), threshold=3.5),
           ir.Linear("out", ("b", "a"), ("out",)))
    w = {"weight": np.zeros((1, 1)), "bias": np.zeros(1)}
    g = ir.Graph(ops=ops, input="images", outputs=("out",), params={o.name: w for o in ops if o.kind == "linear"})
    x = np.array([[0.0], [5.0], [1.0], [1.5]])
    seen, left = {}, []
    out = walk(g, _RowOps(), x, seen.__setitem__, lambda op, rows: left.append((op.name, list(rows))))
    assert left == [("e", [1]), ("f", [3])]           # row 1 leaves at e (6 >= 3), row 3 at f (3.5 >= 3.5)
    assert seen["b"].tolist() == [[2.0], [0.0], [3.0], [3.5]]      # full batch, 0 where not reached
    assert out["out"].tolist() == [[3.0], [6.0], [5.0], [3.5]] and seen["out"] is out["out"]
    left = []
    out = walk(g, _RowOps(), x + 10, seen.__setitem__, lambda op, rows: left.append(list(rows)))
    assert left == [[0, 1, 2, 3]] and not seen["b"].any() and not seen["d"].any()   # nobody ran further
    assert out["out"].tolist() == (x + 11).tolist()




def test_hardware_cost_per_image_follows_its_exit_depth(small):
    """hwmodels charges each image the layers it ran: images leaving at the first exit cost
    less than those running every block, and the mean equals ``layer_ran @ per-layer BOPs``."""
    import hwmodels

    images = small[1][16:]
    never = GraphIntegerExecutor(_small_qg(small, [1.0, 1.0])).run(images)
    conf = never.codes["exits.0.confidence"][:, 0]
    some = GraphIntegerExecutor(_small_qg(small, [float(np.median(conf)) / 4096 + 1e-9, 1.0])).run(images)
    depth = some.trace.extras["exit_depth"]
    assert 0 < (depth == 1).sum() < len(depth)
    rep = hwmodels.estimate(some.trace, hwmodels.load("configs/npu_int8.yaml"))
    bops = np.array([r.bops for r in some.trace.layers], dtype=np.int64)
    per_image = some.trace.layer_ran.astype(np.int64) @ bops
    assert rep.distribution("bops").mean == pytest.approx(float(per_image.mean()), rel=1e-12)
    cycles = np.asarray(rep.per_image("cycles"))
    assert cycles[depth == 1].max() < cycles[depth == 3].min()
    assert per_image[depth == 1].max() < per_image[depth == 3].min()
    full = hwmodels.estimate(never.trace, hwmodels.load("configs/npu_int8.yaml"))
    assert np.allclose(np.asarray(full.per_image("cycles"))[depth == 3], cycles[depth == 3], rtol=1e-12)
