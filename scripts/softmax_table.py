"""The static recipe's post-softmax options: the table of docs/recipes/static.md ("A fair static baseline").

Static recipe (MSE calibration, 128 calibration images on digits) with the post-softmax quantizer
``fixed`` (unsigned a_bits at 2**-a_bits, the default), ``calibrated`` (uniform, power-of-two scale
chosen by MSE on the calibration images) and ``log2`` (FQ-ViT log2 codes, 4 bits at most, shift-add
attn @ V). Every row runs the graph integer executor and the graph fake-quant executor (codes compared
at every tensor: bit-exact N/N) and costs the trace on ``configs/npu_int8.yaml`` (BOPs, cycles).

1. the bundled digits ViT (17 tokens), 360 test images, W8A8 / W6A6 / W4A4: top-1;
2. a random-weight ``deit_tiny_patch16_224`` (197 tokens, seed 0, `reference.lowering.coverage.perturb_`
   noise), 64 calibration + 64 test images of seeded N(0, 1) pixels, W4A4: agreement of the
   integer top-1 with the fp32 model's.

Run from the repository root: ``python scripts/softmax_table.py [digits|timm]``. Prints Markdown.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout, not an installed copy

OPTIONS = (("fixed", None), ("calibrated", {"scale": "calibrated"}), ("log2", {"quantizer": "log2"}))


def _row(model, calib, test, ref, w, a, opt, npu, name, ref_logits=None):
    import reference
    from hwmodels.cost import estimate
    from reference.fakequant_ops import GraphFakeQuantExecutor
    from reference.recipes.config import recipe_from_dict
    from simulator.int_ops import GraphIntegerExecutor
    from simulator.results import bit_exact_images

    cfg = recipe_from_dict({"recipe": "static", "w_bits": w, "a_bits": a, "calib_images": len(calib),
                            **({"params": {"softmax": opt}} if opt else {})})
    qg = reference.quantize_graph(model, calib, cfg, model_name=name)
    ri, rf = GraphIntegerExecutor(qg).run(test, batch_size=16), GraphFakeQuantExecutor(qg).run(test, batch_size=16)
    exact = int(bit_exact_images(ri.codes, rf.codes).sum())
    rep = estimate(ri.trace, npu)
    sm = qg.quantizers[next(t for t in qg.quantizers if t.endswith("attn") and t.startswith("blocks.0"))]
    fmt = f"log2 {sm.bits}b" if sm.kind == "log2" else f"2^-{round(-__import__('math').log2(float(sm.scale)))}"
    out = (100 * float((ri.predictions == ref).mean()), exact, len(test), rep.per_image("bops").mean() / 1e6,
           rep.per_image("cycles").mean() / 1e6, fmt)
    if ref_logits is None:
        return out
    import numpy as np
    return out + (float(np.linalg.norm(ri.logits - ref_logits) / np.linalg.norm(ref_logits)),)


def digits():
    import reference
    from hwmodels.load import load

    model = reference.load_model()
    calib, _ = reference.load_dataset("digits", model, "calib")
    test, labels = reference.load_dataset("digits", model, "test")
    npu = load(str(Path(__file__).resolve().parents[1] / "configs" / "npu_int8.yaml"))
    print("| W/A | softmax | block-0 softmax format | top-1 | bit-exact | GBOPs | npu_int8 Mcycles |")
    print("|---|---|---|---|---|---|---|")
    for w, a in ((8, 8), (6, 6), (4, 4)):
        for label, opt in OPTIONS:
            acc, ex, n, bops, cyc, fmt = _row(model, calib[:128], test, labels, w, a, opt, npu, "vit_digits")
            print(f"| W{w}A{a} | {label} | {fmt} | {acc:.2f}% | {ex}/{n} | {bops / 1e3:.3f} | {cyc:.3f} |", flush=True)


def timm_random():
    import numpy as np
    import timm
    import torch
    from hwmodels.load import load
    from reference.lowering.coverage import perturb_

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    perturb_(model, 1)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 3, 224, 224)).astype(np.float32)
    test = rng.standard_normal((64, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref_logits = model(torch.as_tensor(test)).double().numpy()
    ref = ref_logits.argmax(1)
    print(f"fp32 top-1 classes on the 64 images: {len(np.unique(ref))} distinct")
    npu = load(str(Path(__file__).resolve().parents[1] / "configs" / "npu_int8.yaml"))
    print("| W/A | softmax | block-0 softmax format | agreement with fp32 top-1 | logits: relative L2 error | "
          "bit-exact | GBOPs | npu_int8 Mcycles |")
    print("|---|---|---|---|---|---|---|---|")
    for w, a in ((4, 4),):
        for label, opt in OPTIONS:
            acc, ex, n, bops, cyc, fmt, err = _row(model, calib, test, ref, w, a, opt, npu, "deit_tiny_random",
                                                   ref_logits)
            print(f"| W{w}A{a} | {label} | {fmt} | {acc:.1f}% | {err:.3f} | {ex}/{n} | {bops / 1e3:.3f} | {cyc:.3f} |",
                  flush=True)


if __name__ == "__main__":
    which = sys.argv[1:] or ["digits", "timm"]
    for w in which:
        {"digits": digits, "timm": timm_random}[w]()
