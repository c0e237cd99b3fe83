"""Shared by the exit tests: a random ViT with exits and mixed per-block widths, and the
two-executor equivalence check including exit decisions."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from reference.calibration import collect_boundaries
from reference.exits import ExitHeads
from reference.fakequant import FakeQuantExecutor
from reference.recipes.apq import assemble, freeze_exits
from reference.recipes.config import RecipeConfig
from reference.recipes.static import freeze_static
from reference.vit_float import vit_arch
from simulator.executor import IntegerExecutor
from simulator.results import bit_exact_images, first_mismatch
from strategies import build_vit, random_images

__all__ = ["exit_model", "assert_exits_equivalent"]


def exit_model(cfg, seed, bit_pairs, after, choice, threshold_codes):
    """A random ViT frozen at two bit-width pairs, blocks mixed by ``choice``, exits after ``after``."""
    model = build_vit(cfg, seed=seed)
    calib = random_images(cfg, 6, seed=seed)
    stats = collect_boundaries(model, calib)
    variants = {}
    for wb, ab in bit_pairs:
        rc = RecipeConfig(w_bits=wb, a_bits=ab, weight_calibration="minmax", act_calibration="minmax",
                          calib_images=6)
        variants.setdefault((wb, ab), freeze_static(model, stats, rc, vit_arch(model), "rand", 6))
    heads = ExitHeads.like_final(model, after)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    exits = freeze_exits(model, heads, calib, next(iter(variants.values())), rc, [1.0] * len(after))
    exits = tuple(dataclasses.replace(e, threshold_q=int(t)) for e, t in zip(exits, threshold_codes))
    return assemble(variants, [c % len(variants) for c in choice], exits)


def assert_exits_equivalent(q, images, backend="auto", batch_size=64):
    rf = FakeQuantExecutor(q).run(images, batch_size=batch_size)
    ri = IntegerExecutor(q, gemm_backend=backend).run(images, batch_size=batch_size)
    assert rf.codes.keys() == ri.codes.keys()
    ok = bit_exact_images(rf.codes, ri.codes)
    assert ok.all(), f"images {np.flatnonzero(~ok).tolist()} differ: {first_mismatch(rf.codes, ri.codes)}"
    assert np.array_equal(rf.trace.extras["exit_depth"], ri.trace.extras["exit_depth"])
    assert np.array_equal(rf.trace.layer_ran, ri.trace.layer_ran)
    assert np.array_equal(rf.logits, ri.logits) and np.array_equal(rf.logit_codes, ri.logit_codes)
    assert rf.trace.layers == ri.trace.layers and rf.trace.overflows == ri.trace.overflows
    return rf, ri
