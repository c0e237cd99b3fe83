"""Static vs TSPTQ-ViT on the bundled digits ViT: the table of docs/recipes/tsptq.md.

For W8A8, W6A6, W4A4 and both recipes: top-1 of the fake-quant executor
(integer-only and float-nonlinear) and of the integer simulator,
``bit-exact: N/N``, BOPs and npu_int8 cycles per image; then the quantizer
error of the post-softmax, post-GELU and LayerNorm-output tensors under each
recipe's quantizer (SQNR in dB of the float test-set tensors through the
frozen quantizers, one number per tensor summed over the blocks).

Run from the repository root: ``python scripts/tsptq_table.py`` (a few minutes
on 2 cores). Prints Markdown.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout, not an installed copy

import numpy as np
import torch

import hwmodels
from reference import load_dataset, load_model
from reference.fakequant_ops import GraphFakeQuantExecutor as FakeQuantExecutor
from reference.quantizers import code_range
from reference.recipes import quantize
from reference.recipes.tsptq import v2sf_fake_quantize
from simulator.int_ops import GraphIntegerExecutor as IntegerExecutor
from simulator.results import bit_exact_images

BITS = (8, 6, 4)
RECIPES = ("static", "tsptq")


def _evaluate(q, x, y, fp32_logits, npu, label, rec):
    rf = FakeQuantExecutor(q, "integer").run(x)
    rfl = FakeQuantExecutor(q, "float").run(x, keep_codes=False)
    ri = IntegerExecutor(q).run(x)
    exact = int(bit_exact_images(rf.codes, ri.codes).sum())
    cost = hwmodels.estimate(ri.trace, npu).total
    return (label, rec, *(100 * float(np.mean(r.predictions == y)) for r in (rf, rfl, ri)),
            f"{exact}/{len(x)}", ri.trace.bops_per_image()[0] / 1e9, cost.cycles, _sqnr(fp32_logits, ri.logits))


def accuracy_rows(model, x, y, cal, fp32_logits):
    npu = hwmodels.load("configs/npu_int8.yaml")
    rows, qvits = [], {}
    for bits in BITS:
        for rec in RECIPES:
            q = quantize(model, cal, f"configs/recipes/{rec}_w{bits}a{bits}.yaml", model_name="vit_digits")
            qvits[rec, bits] = q
            rows.append(_evaluate(q, x, y, fp32_logits, npu, f"W{bits}A{bits}", rec))
    return rows, qvits


def float_boundaries(model, x: torch.Tensor) -> dict:
    """Every tensor of the lowered model's float32 walk on ``x`` (docs/graph.md names)."""
    from reference.float_ops import float_forward
    from reference.lowering import lower

    seen: dict = {}
    float_forward(lower(model), x, torch.float32, keep=seen.__setitem__)
    return seen


def ablation_rows(model, x, y, cal, fp32_logits, bits=4):
    """tsptq with one component at a time (the others off) at ``bits``."""
    npu = hwmodels.load("configs/npu_int8.yaml")
    rows = []
    for only in ("softmax", "gelu", "layernorm"):
        params = {k: k == only for k in ("softmax", "gelu", "layernorm")}
        rc = {"recipe": "tsptq", "w_bits": bits, "a_bits": bits, "params": params}
        q = quantize(model, cal, rc, model_name="vit_digits")
        rows.append(_evaluate(q, x, y, fp32_logits, npu, f"W{bits}A{bits}", f"tsptq, {only} only"))
    return rows


def outlier_rows(model, x):
    """Per LayerNorm: max / median of the per-channel ranges on the test set."""
    with torch.no_grad():
        fl = float_boundaries(model, torch.as_tensor(x))
    out = []
    for name, t in fl.items():
        if name.endswith((".norm1", ".norm2")):
            a = t.reshape(-1, t.shape[-1]).abs().amax(0).double().numpy()
            out.append((name, float(a.max() / np.median(a))))
    return out


def _sqnr(v, q) -> float:
    return 10 * math.log10(float(np.sum(v ** 2)) / max(float(np.sum((v - q) ** 2)), 1e-30))


def _tensor_quantizers(q, i):
    """name -> function(float tensor) -> dequantized tensor, for block i of the QuantizedGraph q."""
    p = f"blocks.{i}."
    sm, g = q.params[p + "attn.softmax"], q.params[p + "mlp.act"]
    lo, hi = code_range(g.out_bits)

    def attn(p):
        if sm.ratio_shift:
            return v2sf_fake_quantize(p, 2.0 ** -sm.fine_exp, sm.ratio_shift, sm.out_bits, 0)
        return np.clip(np.floor(p * 2 ** sm.out_bits + 0.5), 0, 2 ** sm.out_bits - 1) * 2.0 ** -sm.out_bits

    def gelu(v):
        if g.ratio_shift:
            return v2sf_fake_quantize(v, g.out_scale, g.ratio_shift, g.out_bits, 1)
        return np.clip(np.floor(v / g.out_scale + 0.5), lo, hi) * g.out_scale

    def ln(lnq):
        shift = lnq.channel_shift if lnq.channel_shift is not None else 0
        scale = lnq.out_scale * 2.0 ** np.asarray(shift, dtype=np.float64)
        lo_n, hi_n = code_range(lnq.out_bits)
        return lambda v: np.clip(np.floor(v / scale + 0.5), lo_n, hi_n) * scale

    return {"attn": attn, "gelu": gelu, "norm1": ln(q.params[p + "norm1"]), "norm2": ln(q.params[p + "norm2"])}


def error_rows(model, x, qvits):
    with torch.no_grad():
        fl = {k: v.double().numpy() for k, v in float_boundaries(model, torch.as_tensor(x)).items()}
    rows = []
    for bits in BITS:
        for rec in RECIPES:
            q = qvits[rec, bits]
            num = dict.fromkeys(("attn", "gelu", "norm1", "norm2"), 0.0)
            den = dict.fromkeys(num, 0.0)
            large = [0.0, 0.0]
            for i in range(len(model.blocks)):
                fns = _tensor_quantizers(q, i)
                for name in num:
                    v = fl[f"blocks.{i}.{name}"]
                    d = fns[name](v)
                    num[name] += float(np.sum(v ** 2))
                    den[name] += float(np.sum((v - d) ** 2))
                    if name == "attn":               # the few large probabilities that carry attention
                        sel = v > 0.25
                        large[0] += float(np.sum(v[sel] ** 2))
                        large[1] += float(np.sum((v[sel] - d[sel]) ** 2))
            rows.append((f"W{bits}A{bits}", rec, *(10 * math.log10(num[k] / max(den[k], 1e-30)) for k in num),
                         10 * math.log10(large[0] / max(large[1], 1e-30))))
    return rows


def main() -> int:
    torch.set_num_threads(1)
    model = load_model()
    x, y = load_dataset("digits", model, split="test")
    cal, _ = load_dataset("digits", model, split="calib", limit=128)
    with torch.no_grad():
        fp32_logits = model(torch.as_tensor(x)).double().numpy()
    fp32 = 100 * float(np.mean(fp32_logits.argmax(1) == y))
    rows, qvits = accuracy_rows(model, x, y, cal, fp32_logits)
    print(f"fp32 top-1: {fp32:.2f}% on {len(x)} test images\n")
    head = ("| bits | recipe | fake-quant int | fake-quant float-nl | simulator | bit-exact | GBOPs/img "
            "| npu_int8 cycles/img | logit SQNR vs fp32 (dB) |\n|---|---|---|---|---|---|---|---|---|")
    line = "| {} | {} | {:.2f} | {:.2f} | {:.2f} | {} | {:.4f} | {:,.0f} | {:.1f} |"
    print(head)
    for r in rows:
        print(line.format(*r))
    print("\nAblation (one tsptq component on, the others static):\n")
    print(head)
    for r in ablation_rows(model, x, y, cal, fp32_logits):
        print(line.format(*r))
    print("\nLayerNorm outputs, max / median per-channel range (test set):",
          ", ".join(f"{n} {v:.1f}" for n, v in outlier_rows(model, x)))
    print("\nQuantizer SQNR (dB, higher is better) on the float test-set tensors, all blocks:\n")
    print("| bits | recipe | post-softmax | post-GELU | norm1 out | norm2 out | softmax p > 0.25 |")
    print("|---|---|---|---|---|---|---|")
    for r in error_rows(model, x, qvits):
        print(f"| {r[0]} | {r[1]} | " + " | ".join(f"{v:.1f}" for v in r[2:]) + " |")
    for bits in BITS:
        print(f"\nW{bits}A{bits} tsptq choices:", qvits["tsptq", bits].meta["tsptq"]["tensors"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
