"""The fake-quant executor's exact GEMM engines and fused stages (`reference.fakequant`,
`reference.fused_stages`): every engine gives the int64 product, every mode of a stage the same codes.

Extreme values at the proved bounds: operands all at the code range's extremes make every
partial sum of a float32 K-chunk reach ``chunk * max|a| * max|b|``, up to 2**24 itself.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import reference.fakequant as fq
from reference import fused_stages as fs
from reference.fakequant import exact_int_matmul, value_range
from reference.tensor_primitives import gelu_q12, requantize, saturate

DTYPES = {"int8": (torch.int8, -128, 127), "uint8": (torch.uint8, 0, 255), "int16": (torch.int16, -32768, 32767),
          "int32": (torch.int32, -(1 << 20), 1 << 20), "int64": (torch.int64, -(1 << 30), 1 << 30)}


@st.composite
def operand(draw, shape, kind):
    """An integer tensor of ``shape``: all at an extreme, or random values, in ``kind``'s range."""
    dt, lo, hi = DTYPES[kind]
    mode = draw(st.sampled_from(["lo", "hi", "mixed", "random"]))
    seed = draw(st.integers(0, 2 ** 16))
    g = torch.Generator().manual_seed(seed)
    if mode == "lo":
        t = torch.full(shape, lo, dtype=torch.int64)
    elif mode == "hi":
        t = torch.full(shape, hi, dtype=torch.int64)
    elif mode == "mixed":
        t = torch.where(torch.rand(shape, generator=g) < 0.5, lo, hi).long()
    else:
        t = torch.randint(lo, hi + 1, shape, generator=g)
    return t.to(dt)


def oracle(a, b):
    return torch.from_numpy(np.matmul(a.long().numpy(), b.long().numpy()))


def matmul_with_int8_route(a, b, int8_fast: bool):
    """`exact_int_matmul` with the int8 ``_int_mm`` routes on or off, whatever this CPU prefers."""
    orig = fq.int8_gemm_is_faster
    try:
        fq.int8_gemm_is_faster = lambda: int8_fast
        return exact_int_matmul(a, b)
    finally:
        fq.int8_gemm_is_faster = orig


@settings(max_examples=40)
@given(st.data(), st.sampled_from(["int8", "uint8", "int16", "int32", "int64"]),
       st.sampled_from([1, 7, 16, 24, 40]), st.sampled_from([8, 64, 384, 1032]), st.sampled_from([8, 16, 24]),
       st.booleans())
def test_exact_int_matmul_linear_equals_int64(data, a_kind, m, k, n, int8_fast):
    """2-D weights: `_int8_matmul` (offset shift for uint8) or float32 K-chunks, each exact."""
    a = data.draw(operand((2, m, k), a_kind))
    b = data.draw(operand((k, n), "int8"))
    got = matmul_with_int8_route(a, b, int8_fast)
    assert got.dtype in (torch.int32, torch.float32, torch.int64)
    assert torch.equal(got.long(), oracle(a, b))


@settings(max_examples=60)
@given(st.data(), st.sampled_from([("int8", "int8"), ("uint8", "int8"), ("int16", "int8"), ("int16", "int16"),
                                   ("int32", "int8"), ("int64", "int64")]),
       st.sampled_from([3, 64, 197, 600, 1100]), st.sampled_from([5, 17, 24]), st.sampled_from([3, 8, 197]),
       st.booleans(), st.booleans())
def test_exact_int_matmul_batched_equals_int64(data, kinds, k, m, n, int8_fast, transposed):
    """Act x act (4-D): `_int8_batched_matmul` (8-bit codes; rows, K and N padded where _int_mm needs it;
    ``b`` given as a transposed view like ``k^T``), float32 in K-chunks (several at k=600/1100 for
    8-bit codes), float64 or int64."""
    a = data.draw(operand((1, 2, m, k), kinds[0]))
    b = data.draw(operand((1, 2, n, k) if transposed else (1, 2, k, n), kinds[1]))
    b = b.transpose(-2, -1) if transposed else b
    got = matmul_with_int8_route(a, b, int8_fast)
    assert torch.equal(got.long(), oracle(a, b))


@pytest.mark.parametrize("lo_a,hi_b", [(-128, -128), (127, -128), (255, 127)])
def test_float32_chunks_exact_at_the_bound(lo_a, hi_b):
    """Every partial sum of a chunk at exactly 2**24 (the largest float32 bound used) stays exact."""
    term = abs(lo_a * hi_b)
    chunk = fq.F32_EXACT // term
    k = 3 * chunk + 5
    a = torch.full((2, k), lo_a, dtype=torch.int64)
    b = torch.full((k, 4), hi_b, dtype=torch.int64)
    got = fq._float32_matmul(a, b, chunk, k * term)
    assert torch.equal(got.long(), oracle(a, b))
    assert int(got.long()[0, 0]) == k * lo_a * hi_b


def test_value_range_from_dtype_or_data():
    assert value_range(torch.zeros(3, dtype=torch.int8)) == (-128, 127)
    assert value_range(torch.tensor([-5, 9])) == (-5, 9)
    assert value_range(torch.zeros(0, dtype=torch.int64)) == (0, 0)


def test_code_dtype_narrowest():
    assert fs.code_dtype(-128, 127) == torch.int8
    assert fs.code_dtype(0, 255) == torch.uint8
    assert fs.code_dtype(-32768, 32767) == torch.int16
    assert fs.code_dtype(-(1 << 24) + 1, (1 << 24) - 1) == torch.int32
    assert fs.code_dtype(-(1 << 31), 1 << 31) == torch.int64


def _stage_args(name, x, g):
    c = x.shape[-1]
    mult = torch.randint(1 << 30, 1 << 31, (c,), generator=g)
    shift = torch.randint(30, 42, (c,), generator=g)
    if name == "linear_codes":
        return (x, torch.randint(-5000, 5000, (c,), generator=g), mult, shift, -128, 127, torch.int8)
    if name == "residual_linear_codes":
        res = torch.randint(-32768, 32768, x.shape, generator=g).to(torch.int16)
        return (x, torch.zeros(c, dtype=torch.long), mult, shift, res, 1076976241, 30, -32768, 32767, torch.int16)
    if name == "requantized_codes":
        return (x, 1589589029, 35, -128, 127, torch.int8)
    if name == "softmax_codes":
        return (x, 2002455433, 31, 8, torch.uint8)
    if name == "gelu_codes":
        return (x.clamp(-(1 << 24) + 1, (1 << 24) - 1), 1500000000, 43, -128, 127, torch.int8)
    if name == "layernorm_codes":
        return (x.clamp(-32768, 32767).to(torch.int16), 12704274, torch.full((c,), 549308200), torch.zeros(c).long(),
                36, -128, 127, torch.int8)
    raise AssertionError(name)


STAGES = ["linear_codes", "residual_linear_codes", "requantized_codes", "softmax_codes", "gelu_codes",
          "layernorm_codes"]


@settings(max_examples=30)
@given(st.sampled_from(STAGES), st.integers(0, 2 ** 16), st.sampled_from([(3, 50, 8), (2, 7, 33), (40, 9)]),
       st.sampled_from(["random", "lo", "hi"]))
def test_row_blocks_equal_whole_tensor(name, seed, shape, mode):
    """Eager in row blocks (`in_row_chunks`, tiny blocks here) = the stage on the whole tensor."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = -(1 << 31), (1 << 31) - 1
    x = {"random": torch.randint(lo, hi, shape, generator=g), "lo": torch.full(shape, lo),
         "hi": torch.full(shape, hi)}[mode].to(torch.int32)
    args = _stage_args(name, x, g)
    fn = getattr(fs, name)
    whole = fn(*[fs._scalar(a) if not isinstance(a, torch.dtype) else a for a in args])
    old = fs.CHUNK_ELEMENTS
    try:
        fs.CHUNK_ELEMENTS = 40
        chunked = fs.FusedStages(compile=False).__getattribute__(name)(*args)
    finally:
        fs.CHUNK_ELEMENTS = old
    for w, c in zip(whole if isinstance(whole, tuple) else (whole,), chunked if isinstance(chunked, tuple) else (chunked,)):
        assert torch.equal(torch.as_tensor(w), torch.as_tensor(c))


def test_gelu_stage_is_the_formula():
    """The fused GELU stage = saturate(requantize(gelu_q12(h))) written out (Q12 inputs at the limits)."""
    h = torch.tensor([-(1 << 24) + 1, -13518, -13517, -1, 0, 1, 13517, 13518, (1 << 24) - 1], dtype=torch.int32)
    want = saturate(requantize(gelu_q12(h.long()), 1500000000, 43), -128, 127)
    got = fs.FusedStages(compile=False).gelu_codes(h, 1500000000, 43, -128, 127, torch.int8)
    assert got.dtype == torch.int8 and torch.equal(got.long(), want)


@pytest.mark.slow
@settings(max_examples=6)
@given(st.integers(0, 2 ** 16), st.sampled_from(["random", "lo", "hi"]))
def test_compiled_stages_equal_eager(seed, mode):
    """TorchInductor-fused stages give the eager stages' codes (extreme accumulators included).
    Shapes stay fixed-rank with sides >= 2 so each stage compiles once."""
    g = torch.Generator().manual_seed(seed)
    shape = (3, 17, 24)
    lo, hi = -(1 << 31), (1 << 31) - 1
    x = {"random": torch.randint(lo, hi, shape, generator=g), "lo": torch.full(shape, lo),
         "hi": torch.full(shape, hi)}[mode].to(torch.int32)
    for name in STAGES:
        args = _stage_args(name, x, g)
        eager = getattr(fs.FusedStages(compile=False), name)(*args)
        fused = getattr(fs.FusedStages(compile=True), name)(*args)
        for e, f in zip(eager if isinstance(eager, tuple) else (eager,), fused if isinstance(fused, tuple) else (fused,)):
            assert torch.equal(torch.as_tensor(e), torch.as_tensor(f)), name
    assert not fs._failed


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [{"w_bits": 8, "a_bits": 8}, {"w_bits": 4, "a_bits": 4, "act_fn": "quick_gelu"}])
def test_compiled_executor_bit_exact_with_simulator(recipe):
    """The executor with every stage fused (``compile=True``) = eager (``compile=False``) = the
    numba simulator, on every tensor of a seeded toy ViT (codes, logits, overflow counts)."""
    from reference.recipes import quantize
    from reference.recipes.config import RecipeConfig
    from reference.fakequant_ops import GraphFakeQuantExecutor
    from simulator.int_ops import GraphIntegerExecutor
    from simulator.results import bit_exact_images, first_mismatch
    from strategies import build_vit, random_images

    recipe = dict(recipe)
    act = recipe.pop("act_fn", None)
    cfg = dict(img_size=16, patch_size=4, in_chans=3, num_classes=10, embed_dim=32, depth=2, num_heads=2)
    extra = {"act_layer": "quick_gelu"} if act else {}
    model = build_vit(cfg, seed=3, **extra)
    x = random_images(cfg, 6, seed=1)
    qg = quantize(model, x, RecipeConfig(calib_images=6, **recipe))
    fused = GraphFakeQuantExecutor(qg, compile=True).run(x)
    eager = GraphFakeQuantExecutor(qg, compile=False).run(x)
    sim = GraphIntegerExecutor(qg).run(x)
    for other in (eager, sim):
        assert bit_exact_images(fused.codes, other.codes).all(), first_mismatch(fused.codes, other.codes)
        assert np.array_equal(fused.logit_codes, other.logit_codes)
        assert fused.trace.overflows == other.trace.overflows
    assert not fs._failed
