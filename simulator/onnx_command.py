"""``simulate export-onnx`` and ``simulate --onnx-qdq``: the ONNX QDQ commands (docs/onnx.md).

    simulate export-onnx --out model.onnx [--recipe static_w8a8] [--model/--checkpoint/--data/--calib]
    simulate export-onnx --out model.onnx --qgraph model.qgraph.npz --check 256
    simulate --onnx-qdq model_qdq.onnx [--data DIR] [--images N] [--json out.json]

``export-onnx`` freezes the recipe on the integer graph (or loads a saved
``QuantizedGraph``) and writes it as a standard QDQ model
(`simulator.onnx_export`); ``--check N`` then runs onnxruntime on N test images
and prints its top-1 agreement and logit SQNR against the simulator and the
fake-quant float-nonlinear mode. ``--onnx-qdq`` imports a QDQ model
(`reference.onnx_import.import_qdq`) into the integer graph and simulates it
on the test images against onnxruntime. Part of the CLI's composition root:
reference, torch and onnxruntime are imported lazily.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from simulator.errors import InputError
from simulator.onnx_session import logit_sqnr_db, ort_session

__all__ = ["export_main", "onnx_qdq_main", "ort_session", "logit_sqnr_db", "compare_with_ort"]

log = logging.getLogger("simulator.cli")


def _parser() -> argparse.ArgumentParser:
    from simulator.cli import _Parser, add_logging_arguments, add_model_arguments

    p = _Parser(prog="simulate export-onnx", description=__doc__.splitlines()[0])
    add_model_arguments(p)
    o = p.add_argument_group("export")
    o.add_argument("--out", required=True, metavar="PATH", help="the ONNX file to write")
    o.add_argument("--qgraph", default=None, metavar="PATH",
                   help="export this saved QuantizedGraph (.npz) instead of quantizing the model")
    o.add_argument("--no-int4", action="store_true",
                   help="store 4-bit codes in 8-bit containers behind a Clip (for runtimes without INT4)")
    o.add_argument("--check", type=int, default=0, metavar="N",
                   help="run onnxruntime on N test images and compare with the simulator (default 0: no check)")
    o.add_argument("--json", default=None, metavar="PATH", help="write the --check figures as JSON")
    add_logging_arguments(p)
    return p


def compare_with_ort(qg, model_bytes: bytes, images: np.ndarray, labels=None, batch_size: int = 64) -> dict:
    """onnxruntime (optimized: its QDQ integer kernels; and unoptimized: QDQ as float ops) against the
    simulator and the fake-quant float-nonlinear mode on ``images``: top-1 agreement and logit SQNR."""
    from reference.fakequant_ops import GraphFakeQuantExecutor
    from simulator.int_ops import GraphIntegerExecutor

    sim = GraphIntegerExecutor(qg).run(images, batch_size, keep_codes=False)
    fq = GraphFakeQuantExecutor(qg, "float").run(images, batch_size, keep_codes=False)
    out = {"images": int(len(images)), "simulator_top1": None, "runs": {}}
    for name, opt in (("ort_optimized", True), ("ort_unoptimized", False)):
        sess = ort_session(model_bytes, optimize=opt)
        logits = np.concatenate([sess.run(None, {qg.graph.input: images[s:s + batch_size].astype(np.float32)})[0]
                                 for s in range(0, len(images), batch_size)])
        pred = logits.argmax(1)
        out["runs"][name] = {
            "agree_simulator": float((pred == sim.predictions).mean()),
            "agree_fakequant_float": float((pred == fq.predictions).mean()),
            "sqnr_db_vs_simulator": logit_sqnr_db(logits, sim.logits),
            "sqnr_db_vs_fakequant_float": logit_sqnr_db(logits, fq.logits),
        }
        if labels is not None:
            out["runs"][name]["top1"] = float((pred == labels).mean())
    if labels is not None:
        out["simulator_top1"] = float((sim.predictions == labels).mean())
        out["fakequant_float_top1"] = float((fq.predictions == labels).mean())
    out["fakequant_float_vs_simulator"] = {"agree": float((fq.predictions == sim.predictions).mean()),
                                           "sqnr_db": logit_sqnr_db(fq.logits, sim.logits)}
    return out


def _print_comparison(cmp: dict, label: str) -> None:
    print(f"onnxruntime vs {label} on {cmp['images']} images:")
    for name, r in cmp["runs"].items():
        top = f"  top-1 {100 * r['top1']:.1f}%" if "top1" in r else ""
        print(f"  {name:<16} agree simulator {100 * r['agree_simulator']:.1f}% "
              f"(SQNR {r['sqnr_db_vs_simulator']:.1f} dB)"
              f"  agree fake-quant float {100 * r['agree_fakequant_float']:.1f}% "
              f"(SQNR {r['sqnr_db_vs_fakequant_float']:.1f} dB){top}")
    if cmp.get("simulator_top1") is not None:
        print(f"  simulator top-1 {100 * cmp['simulator_top1']:.1f}%, fake-quant float-nonlinear "
              f"{100 * cmp['fakequant_float_top1']:.1f}%")


def _quantized_graph(args, limit: int):
    """(QuantizedGraph, test images, labels) from --qgraph or by quantizing --model on the graph."""
    from simulator import progress
    from simulator.cli import load_inputs, load_model_from_args, preflight

    plan = preflight(args, [("--out", args.out), ("--json", args.json)])
    with progress.phase("importing torch, timm and numba"):
        from simulator.engines import graph_quantizer
        from simulator.qgraph import QuantizedGraph
    model = load_model_from_args(args)
    images, labels, calib = load_inputs(args, model, plan, limit or None)
    if args.qgraph:
        return QuantizedGraph.load(args.qgraph), images, labels
    cfg = plan.cfg
    with progress.phase(f"calibrating and freezing {cfg.label} on {len(calib)} images (graph)"):
        qg = graph_quantizer(cfg.recipe)(model, calib, cfg, model_name=args.model or "vit_digits")
    return qg, images, labels


def export_main(argv: list[str]) -> int:
    from simulator.atomic_files import Batch, dumps_json
    from simulator.onnx_export import export_qdq

    args = _parser().parse_args(argv)
    if args.check < 0:
        raise InputError(f"--check: expected a non-negative integer, got {args.check}")
    t0 = time.perf_counter()
    qg, images, labels = _quantized_graph(args, args.check)
    model = export_qdq(qg, int4=not args.no_int4)
    data = model.SerializeToString()
    cmp = None
    if args.check:
        cmp = compare_with_ort(qg, data, images[:args.check], labels[:args.check])
        _print_comparison(cmp, qg.meta.get("label", "the graph"))
    with Batch() as batch:
        batch.add(args.out, data, f"--out {args.out}")
        if args.json:
            payload = {"recipe": qg.meta.get("label"), "onnx": args.out, "opset": model.opset_import[0].version,
                       "nodes": len(model.graph.node), "check": cmp}
            batch.add(args.json, dumps_json(_finite(payload), f"--json {args.json}"), f"--json {args.json}")
    n_q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    print(f"wrote {args.out}: {len(model.graph.node)} nodes ({n_q} QuantizeLinear), opset "
          f"{model.opset_import[0].version}, recipe {qg.meta.get('label')} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _onnx_qdq_parser():
    from simulator.cli import _Parser, add_logging_arguments

    p = _Parser(prog="simulate --onnx-qdq", description="simulate a QDQ ONNX model imported into the integer graph")
    p.add_argument("--onnx-qdq", required=True, metavar="PATH", help="a QDQ model of a supported ViT")
    a = p.add_argument_group("architecture (default: read from the file)")
    a.add_argument("--model", default=None,
                   help="timm name fixing the architecture instead (its weights are replaced by the file's)")
    a.add_argument("--num-heads", type=int, default=None, metavar="H",
                   help="attention heads, when the file's attention Reshape does not give them (without --model)")
    a.add_argument("--img-size", type=int, default=None, metavar="PX", help="with --model: timm img_size")
    a.add_argument("--num-classes", type=int, default=None, metavar="N", help="with --model: timm num_classes")
    a.add_argument("--mean", type=float, nargs="+", default=None, metavar="M",
                   help="input normalisation mean, 1 or 3 values (default: --model's; without it 0.5)")
    a.add_argument("--std", type=float, nargs="+", default=None, metavar="S",
                   help="input normalisation std, 1 or 3 values (default: --model's; without it 0.5)")
    p.add_argument("--data", default=None, metavar="DIR", help="evaluation images (default: digits)")
    p.add_argument("--calib", default=None, metavar="DIR",
                   help="calibration images for the tensors the QDQ model leaves float (default: --data's)")
    p.add_argument("--calib-images", type=int, default=128, metavar="N", help="calibration images (default 128)")
    p.add_argument("--images", type=int, default=None, metavar="N", help="evaluate N images (default: all)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the comparison as JSON")
    add_logging_arguments(p)
    return p


def _import_model(args, qdq):
    """(timm model holding the file's float params, architecture record) for ``--onnx-qdq``."""
    from reference.onnx_import import model_for_import

    if args.model is None:
        for flag, v in (("--img-size", args.img_size), ("--num-classes", args.num_classes)):
            if v is not None:
                raise InputError(f"{flag}: only with --model (without it the file's shapes are the architecture)")
        cfg = {k: tuple(v) for k, v in (("mean", args.mean), ("std", args.std)) if v is not None}
        out = model_for_import(qdq, None, args.num_heads, cfg)
        if args.mean is None or args.std is None:
            log.warning("%s: the ONNX file carries no input normalisation; images are normalised with mean 0.5, std "
                        "0.5 per channel (timm's ViT default) unless --mean/--std say otherwise", args.onnx_qdq)
        return out
    if args.num_heads is not None:
        raise InputError("--num-heads: only without --model (the model fixes its heads)")
    from reference.models import load_model

    model = load_model(args.model, None, num_classes=args.num_classes, img_size=args.img_size, mean=args.mean,
                       std=args.std, random_weights_ok=True)
    return model_for_import(qdq, model)


def onnx_qdq_main(argv: list[str]) -> int:
    """``simulate --onnx-qdq model.onnx``: import, simulate, compare with onnxruntime (see the module docstring)."""
    args = _onnx_qdq_parser().parse_args(argv)
    from simulator.atomic_files import Batch, dumps_json
    from simulator import preflight as pf

    pf.check_outputs([("--json", args.json)])
    for flag, v in (("--mean", args.mean), ("--std", args.std)):
        if v is not None and len(v) not in (1, 3):
            raise InputError(f"{flag}: expected 1 or 3 values, got {len(v)}")
    from reference.onnx_import import QDQModel, import_qdq, ort_comparison

    qdq = QDQModel(args.onnx_qdq)          # a missing / non-ONNX / non-QDQ file fails before the model loads
    from reference.data import load_dataset

    model, arch = _import_model(args, qdq)
    calib, _ = load_dataset(args.calib if args.calib is not None else args.data, model, split="calib",
                            limit=args.calib_images)
    qg = import_qdq(qdq, model, calib, architecture=arch)
    images, labels = load_dataset(args.data, model, split="test", limit=args.images)
    with open(args.onnx_qdq, "rb") as f:
        data = f.read()
    cmp = ort_comparison(qg, data, images, labels)
    n_static = sum(q.kind == "static" for q in qg.quantizers.values())
    print(f"imported {args.onnx_qdq}: {len(qg.graph.ops)} ops, {n_static} quantized tensors; "
          f"architecture {_describe(arch, args.model)}")
    for k, v in cmp["summary"].items():
        print(f"  {k}: {v}")
    if args.json:
        with Batch() as batch:
            payload = cmp | {"architecture": arch}
            batch.add(args.json, dumps_json(_finite(payload), f"--json {args.json}"), f"--json {args.json}")
    return 0


def _describe(arch: dict, name) -> str:
    if arch["source"] == "model":
        what = f"{arch['params']} float tensors" if isinstance(arch["params"], int) else arch["params"]
        return f"of --model {name} ({what} from the file)"
    kw = arch["kwargs"]
    keys = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "num_classes", "global_pool")
    return "read from the file: " + ", ".join(f"{k}={kw[k]}" for k in keys)


def _finite(node):
    """JSON-ready copy: an infinite SQNR (identical logits) becomes null."""
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_finite(v) for v in node]
    if isinstance(node, float) and not np.isfinite(node):
        return None
    return node
