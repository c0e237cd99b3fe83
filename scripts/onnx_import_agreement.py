"""Import acceptance of issue 17: timm fp32 -> ONNX -> onnxruntime quantize_static (QDQ) -> import -> compare.

For the bundled digits ViT and a random-weight DeiT-Tiny (``deit_tiny_patch16_224``,
``img_size=64``, patch 16, seeded weights + `perturb_` noise, head bias centred on the calibration
images' mean logits so that the argmax depends on the image: with timm's random init every image
gets the same class): export fp32 ONNX with
``torch.onnx.export`` (TorchScript exporter, offline), quantize with
``onnxruntime.quantization.quantize_static`` (QDQ, per-channel int8 weights,
symmetric int8 activations, MinMax calibration on the calibration images,
Conv/MatMul/Gemm), import with `reference.onnx_import.import_qdq` and compare the
simulator of the imported graph with onnxruntime (`ort_comparison`) on 256
images: top-1 agreement, logit SQNR, codes equal / within +-1 at every imported
GEMM-input boundary. Prints Markdown tables.

Usage (repository root): ``python scripts/onnx_import_agreement.py [--images 256] [--out DIR]``
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np


def quantize_with_ort(fp32_path: str, qdq_path: str, calib: np.ndarray, input_name: str = "images") -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{input_name: calib[i:i + 1].astype(np.float32)} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(fp32_path, qdq_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   # GEMM outputs stay float (the simulator keeps int32 accumulators / rescales
                                   # them into the next op; ORT would round q k^T to int8 before the softmax)
                                   "OpTypesToExcludeOutputQuantization": ["Conv", "MatMul", "Gemm"]})


def export_fp32(model, path: str, shape) -> None:
    import torch

    torch.onnx.export(model, (torch.zeros(1, *shape),), path, input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)


def run_case(name, model, calib, test, labels, out_dir):
    from reference.onnx_import import import_qdq, ort_comparison

    fp32, qdq = os.path.join(out_dir, f"{name}_fp32.onnx"), os.path.join(out_dir, f"{name}_qdq.onnx")
    export_fp32(model, fp32, test.shape[1:])
    quantize_with_ort(fp32, qdq, calib)
    qg = import_qdq(qdq, model, calib)
    import torch
    with torch.no_grad():
        fp32 = model(torch.from_numpy(np.ascontiguousarray(test, dtype=np.float32))).numpy()
    with open(qdq, "rb") as f:
        cmp = ort_comparison(qg, f.read(), test, labels, float_logits=fp32)
    cmp["file_alone"] = file_alone_agreement(qdq, qg, calib, test)
    return cmp


def file_alone_agreement(qdq, qg, calib, test) -> dict:
    """The file imported without the model (architecture and every float param read from the graph) against
    the import with the model: images whose codes are equal at every boundary, and equal logits."""
    from reference.onnx_import import import_qdq
    from simulator.int_ops import GraphIntegerExecutor
    from simulator.results import bit_exact_images

    alone = import_qdq(qdq, None, calib)
    a, b = GraphIntegerExecutor(alone).run(test), GraphIntegerExecutor(qg).run(test)
    same = bit_exact_images(a.codes, b.codes) & (a.logit_codes == b.logit_codes).all(axis=1)
    return {"kwargs": alone.meta["architecture"]["kwargs"], "images": int(len(test)),
            "bit_exact_images": int(same.sum()), "boundaries": len(a.codes)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--out", default=None)
    ap.add_argument("--cases", nargs="+", default=["digits", "deit_tiny"])
    args = ap.parse_args()
    import timm
    import torch

    import reference
    from reference.lowering.coverage import perturb_

    out_dir = args.out or tempfile.mkdtemp(prefix="onnx_import_")
    results = {}
    if "digits" in args.cases:
        m = reference.load_model().eval()
        calib, _ = reference.load_dataset("digits", m, "calib", limit=args.calib)
        test, labels = reference.load_dataset("digits", m, "test")
        test, labels = test[:args.images], labels[:args.images]
        results["vit_digits"] = run_case("digits", m, calib, test, labels, out_dir)
    if "deit_tiny" in args.cases:
        torch.manual_seed(0)
        m = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=10).eval()
        perturb_(m, 1)
        rng = np.random.default_rng(0)
        calib = rng.standard_normal((args.calib, 3, 64, 64)).astype(np.float32)
        test = rng.standard_normal((args.images, 3, 64, 64)).astype(np.float32)
        with torch.no_grad():   # random weights: the logits barely depend on the image (one class for all);
            m.head.bias -= m(torch.from_numpy(calib)).mean(0)   # centred on the calibration images, 10 classes used
        results["deit_tiny (random, 64 px)"] = run_case("deit_tiny", m, calib, test, None, out_dir)
    print("| model | images | top-1 agreement ORT vs simulator | logit SQNR (dB) | boundaries | codes equal | "
          "codes within +-1 | weight codes equal |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        s = r["summary"]
        w = s["weight_codes_equal"]
        print(f"| {name} | {s['images']} | {100 * s['top1_agreement']:.1f}% | {s['logit_sqnr_db']:.1f} | "
              f"{s['boundaries']} | {100 * s['codes_equal']:.2f}% | {100 * s['codes_within_1']:.2f}% | "
              f"{w[0]}/{w[1]} |")
        print(f"|   (ORT classes predicted: {s['ort_classes']}; top-1 agreement with fp32: ORT "
              f"{100 * s['ort_agree_fp32']:.1f}%, simulator {100 * s['simulator_agree_fp32']:.1f}%) |")
        if "ort_top1" in s:
            print(f"|   (labels: ORT top-1 {100 * s['ort_top1']:.1f}%, simulator {100 * s['simulator_top1']:.1f}%) |")
    print("\n| model | read from the file alone | images bit-exact vs import with the model (all boundaries) |")
    print("|---|---|---|")
    for name, r in results.items():
        a, k = r["file_alone"], r["file_alone"]["kwargs"]
        arch = ", ".join(f"{x}={k[x]}" for x in ("img_size", "patch_size", "in_chans", "embed_dim", "depth",
                                                  "num_heads", "num_classes", "global_pool", "act_layer"))
        print(f"| {name} | {arch} | {a['bit_exact_images']}/{a['images']} ({a['boundaries']} boundaries) |")
    for name, r in results.items():
        print(f"\n{name}: per boundary (ORT QuantizeLinear codes vs simulator codes)")
        print("| tensor | bits | equal | within +-1 | max abs diff |")
        print("|---|---|---|---|---|")
        for row in r["boundaries"]:
            if row["equal"] is None:
                print(f"| {row['tensor']} | | | | {row['note']} |")
            else:
                print(f"| {row['tensor']} | {row['bits']} | {100 * row['equal']:.2f}% | {100 * row['within_1']:.2f}% | "
                      f"{row['max_abs_diff']} |")
    print(f"\nfiles in {out_dir}")


if __name__ == "__main__":
    main()
