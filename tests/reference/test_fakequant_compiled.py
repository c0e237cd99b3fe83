"""`FakeQuantExecutor(compile=True)`: TorchInductor-fused integer stages give
exactly the eager executor's codes (and so the simulator's)."""

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from reference.fakequant import FakeQuantExecutor
from reference.recipes import quantize
from reference.recipes.config import RecipeConfig
from simulator.executor import IntegerExecutor
from simulator.results import bit_exact_images, first_mismatch


@pytest.mark.slow   # end to end; still run by `python -m pytest -q` (.ci/run)
def test_compiled_stages_are_bit_exact():
    torch.manual_seed(3)
    model = VisionTransformer(img_size=8, patch_size=2, in_chans=1, num_classes=5, embed_dim=24, depth=2,
                              num_heads=2).eval()
    x = (np.random.default_rng(3).standard_normal((12, 1, 8, 8)) * 3).astype(np.float32)
    for bits in (8, 4):
        q = quantize(model, x, RecipeConfig(w_bits=bits, a_bits=bits))
        compiled = FakeQuantExecutor(q, compile=True).run(x)
        eager = FakeQuantExecutor(q).run(x)
        sim = IntegerExecutor(q).run(x)
        assert bit_exact_images(compiled.codes, eager.codes).all(), first_mismatch(compiled.codes, eager.codes)
        assert bit_exact_images(compiled.codes, sim.codes).all()
        assert compiled.trace.overflows == eager.trace.overflows
