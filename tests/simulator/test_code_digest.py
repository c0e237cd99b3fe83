"""Per-image code digests (simulator/kernels/code_digest.py, simulator.results.CodeDigests) and the
bit-exact check the main job makes with them (simulator/evaluation.py)."""

from __future__ import annotations

import numpy as np
import pytest
from digits_executors import digits_setup
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.kernels.code_digest import row_digests
from simulator.results import CodeDigests, RunResult, bit_exact_images

ROWS = st.integers(1, 5)
COLS = st.integers(1, 70)      # covers every remainder of the four lanes


@st.composite
def code_rows(draw, lo=-128, hi=127):
    n, m = draw(ROWS), draw(COLS)
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(lo, hi + 1, (n, m), dtype=np.int64)


@settings(max_examples=60, deadline=None)
@given(code_rows())
def test_digest_depends_on_the_integers_not_the_dtype(a):
    want = row_digests(a)
    for dt in (np.int8, np.int16, np.int32, np.float32, np.float64):
        assert row_digests(a.astype(dt)).tolist() == want.tolist()
    assert row_digests(a.reshape(len(a), 1, -1)).tolist() == want.tolist()       # per-image shape is flattened
    assert row_digests(np.asfortranarray(a)).tolist() == want.tolist()           # any memory layout


@settings(max_examples=60, deadline=None)
@given(code_rows(), st.data())
def test_each_image_is_digested_alone(a, data):
    d = row_digests(a)
    i = data.draw(st.integers(0, len(a) - 1))
    assert row_digests(a[i:i + 1]).tolist() == [d[i]]


@settings(max_examples=200, deadline=None)
@given(code_rows(-(2**31), 2**31 - 1), st.data())
def test_one_changed_code_always_changes_the_digest(a, data):
    """The proved property: rows differing in exactly one code never collide."""
    i = data.draw(st.integers(0, a.shape[0] - 1))
    j = data.draw(st.integers(0, a.shape[1] - 1))
    delta = data.draw(st.integers(-(2**40), 2**40).filter(bool))
    b = a.copy()
    b[i, j] += delta
    da, db = row_digests(a), row_digests(b)
    assert da[i] != db[i]
    assert np.delete(da, i).tolist() == np.delete(db, i).tolist()


def test_permuted_and_longer_rows_differ():
    a = np.arange(12, dtype=np.int64).reshape(1, -1)
    assert row_digests(a)[0] != row_digests(a[:, ::-1])[0]
    assert row_digests(a)[0] != row_digests(np.concatenate([a, [[0]]], axis=1))[0]   # trailing zero counts
    assert row_digests(np.zeros((3, 0), np.int8)).tolist() == row_digests(np.zeros((3, 0), np.int64)).tolist()
    assert row_digests(np.array([[True, False]])).tolist() == row_digests(np.array([[1, 0]])).tolist()
    with pytest.raises(TypeError, match="integer"):
        row_digests(np.array([["a"]]))


def _digests(codes: dict) -> CodeDigests:
    d = CodeDigests()
    for k, v in codes.items():
        d.add(k, v)
    return d


@settings(max_examples=40, deadline=None)
@given(code_rows(), code_rows(), st.data())
def test_bit_exact_on_digests_equals_bit_exact_on_codes(a, b, data):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    mine = {"x": a, "y": b}
    theirs = {"x": a.copy(), "y": b.copy()}
    flips = data.draw(st.lists(st.tuples(st.sampled_from("xy"), st.integers(0, n - 1)), max_size=3))
    for k, i in flips:
        theirs[k][i, 0] += 1
    want = bit_exact_images(mine, theirs)
    assert bit_exact_images(_digests(mine), _digests(theirs)).tolist() == want.tolist()
    assert want.sum() == n - len({i for _, i in flips})
    take = np.arange(n)[::2]
    assert bit_exact_images(_digests(mine).take(take), _digests(theirs).take(take)).tolist() == want[take].tolist()
    with pytest.raises(TypeError, match="digests"):
        bit_exact_images(_digests(mine), theirs)


@pytest.fixture(scope="module")
def digits_w4a4():
    return digits_setup("configs/recipes/igq_w4a4.yaml", 24)


def test_executors_digest_what_they_would_keep(digits_w4a4):
    """Both executors, keep_codes="digest": the digests of the codes they keep with keep_codes=True
    (every tensor, the IGQ group maps too), batch by batch as well as whole."""
    _, images, _, (fq_int, _, sim) = digits_w4a4
    for ex in (fq_int, sim):
        kept = ex.run(images, batch_size=10, keep_codes=True)
        dig = ex.run(images, batch_size=10, keep_codes="digest")
        assert sorted(dig.digests.names()) == sorted(kept.codes)
        assert any(k.endswith(".groups") for k in kept.codes)
        for k in kept.codes:
            assert dig.digests.digests(k).tolist() == row_digests(kept.codes.raw(k)).tolist(), k
            assert dig.digests.shapes[k] == tuple(kept.codes.raw(k).shape[1:])
        assert dig.predictions.tolist() == kept.predictions.tolist() and len(dig.codes) == 0


class _OffByOne:
    """The simulator with one code of one image changed: what a datapath bug looks like."""

    def __init__(self, sim, image):
        self.sim, self.image = sim, image

    def run(self, images, batch_size=64, keep_codes=True):
        r = self.sim.run(images, batch_size, keep_codes=bool(keep_codes))
        if not keep_codes:
            return r
        codes = {k: r.codes.raw(k).copy() for k in r.codes}
        hit = [i for i in range(len(images)) if np.array_equal(images[i], self.image)]
        name = sorted(codes)[0]
        for i in hit:
            codes[name][i].flat[0] += 1
        if keep_codes == "digest":
            return RunResult(r.logits, r.logit_codes, r.trace, digests=_digests(codes))
        return RunResult(r.logits, r.logit_codes, r.trace, codes=codes)


def test_evaluation_finds_and_names_a_mismatch(digits_w4a4):
    from simulator.evaluation import evaluate_images, reference_positions

    model, images, labels, (fq_int, fq_float, sim) = digits_w4a4
    ev = evaluate_images(model, (fq_int, fq_float, _OffByOne(sim, images[13])), images, labels, 100,
                         reference_positions(24, "full") + 100, 8)     # images 100..123 of an evaluation
    assert ev.exact.tolist() == [i != 13 for i in range(24)]
    name = sorted(sim.run(images[:1], keep_codes=True).codes)[0]
    assert ev.mismatch.startswith(f"image 113: {name}[0")             # position in the evaluation, tensor
    clean = evaluate_images(model, (fq_int, fq_float, sim), images, labels, 0, reference_positions(24, "full"), 8)
    assert clean.exact.all() and clean.mismatch is None
