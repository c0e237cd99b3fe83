"""Shared end-to-end check: both graph executors agree on every tensor, the logits and the trace."""

from __future__ import annotations

import numpy as np

from reference.fakequant_ops import GraphFakeQuantExecutor
from simulator.int_ops import GraphIntegerExecutor
from simulator.results import bit_exact_images, first_mismatch


def assert_equivalent(q, images, backend):
    """Run both executors of the `QuantizedGraph` ``q``; assert codes, logits, trace and overflows
    identical. Returns the results."""
    rf = GraphFakeQuantExecutor(q, nonlinear="integer").run(images)
    ri = GraphIntegerExecutor(q, gemm_backend=backend).run(images)
    assert rf.codes.keys() == ri.codes.keys()
    ok = bit_exact_images(rf.codes, ri.codes)
    assert ok.all(), f"[{backend}] images {np.flatnonzero(~ok).tolist()} differ: {first_mismatch(rf.codes, ri.codes)}"
    assert np.array_equal(rf.logit_codes, ri.logit_codes)
    assert np.array_equal(rf.logits, ri.logits)
    assert np.array_equal(rf.predictions, ri.predictions)
    assert rf.trace.layers == ri.trace.layers
    assert (rf.trace.n_images, rf.trace.model, rf.trace.recipe) == (ri.trace.n_images, ri.trace.model,
                                                                     ri.trace.recipe)
    assert rf.trace.overflows == ri.trace.overflows, f"[{backend}] {rf.trace.overflows} vs {ri.trace.overflows}"
    return rf, ri
