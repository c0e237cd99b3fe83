"""Fixtures shared by the simulator tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def fq():
    """The torch stage functions under test (those `reference.fakequant_ops.FakeQuantOps` calls for a
    softmax / GELU / LayerNorm op: `reference.fakequant`, two-scaled words `reference.two_scaled_fq`),
    called with a frozen op's params."""
    from types import SimpleNamespace

    from reference import two_scaled_fq as v2sf
    from reference.fakequant import gelu_stage, layernorm_stage, softmax_stage

    def bounds(bits):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    return SimpleNamespace(
        _softmax=lambda sm, acc: (v2sf.softmax_words(sm, acc, "integer") if sm.ratio_shift
                                  else softmax_stage(acc, sm.in_mult, sm.in_shift, sm.out_bits)),
        _gelu=lambda g, _, h: (v2sf.gelu_words(g, h, "integer") if g.ratio_shift
                               else gelu_stage(h, g.out_mult, g.out_shift, *bounds(g.out_bits))),
        _layernorm=lambda ln, x: layernorm_stage(x, ln.eps_q, torch.as_tensor(np.asarray(ln.gamma_mult)),
                                                 torch.as_tensor(np.asarray(ln.beta_q)), ln.out_shift,
                                                 *bounds(ln.out_bits)))
