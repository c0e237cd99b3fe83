"""``simulate cost``: hardware cost of a timm ViT from its shapes alone.

    simulate cost --model deit_base_patch16_384 --hw configs/npu_int8.yaml
    simulate cost --model deit_small_patch16_224 --img-size 288 --wbits 4 --abits 8 \\
                  --hw configs/npu_int8.yaml configs/npu_w4a8.yaml --json cost.json

No checkpoint and no images: the model is built with ``pretrained=False`` only
to read its architecture, lowered to the integer graph (`reference.lower`,
so every lowered timm ViT configuration is costed) and given the static
recipe's quantizer placement with uniform bit-widths
(`reference.recipes.static_graph.shape_only_graph`); the trace is the one a
real run records (`simulator.graph_trace`). Part of the
CLI's composition root (imports reference and hwmodels lazily).
"""

from __future__ import annotations

import argparse

from simulator.errors import InputError

__all__ = ["cost_main"]


def _parser() -> argparse.ArgumentParser:
    from simulator.cli import _Parser, add_logging_arguments, add_model_arguments

    p = _Parser(prog="simulate cost", description=__doc__.splitlines()[0])
    add_model_arguments(p, data=False)
    b = p.add_argument_group("bit-widths")
    b.add_argument("--wbits", type=int, default=8, metavar="B", help="GEMM weight bits, 2..8 (default 8)")
    b.add_argument("--abits", type=int, default=8, metavar="B", help="GEMM activation bits, 2..8 (default 8)")
    b.add_argument("--residual-bits", type=int, default=16, metavar="B",
                   help="residual stream bits (default 16)")
    b.add_argument("--edge-bits", type=int, default=8, metavar="B",
                   help="patch embed / head bits (default 8; 0: same as --wbits/--abits)")
    o = p.add_argument_group("accelerators and outputs")
    o.add_argument("--hw", nargs="+", required=True, metavar="NPU",
                   help="accelerator YAML(s); a bare name (npu_int8) means configs/<name>.yaml")
    o.add_argument("--json", default=None, metavar="PATH",
                   help="write the cost reports (with tool version, time, accelerator parameters) as JSON")
    o.add_argument("--csv", default=None, metavar="PATH", help="write per-image totals, one row per accelerator")
    add_logging_arguments(p)
    return p


def _check(args) -> list:
    """Flags, accelerators and outputs, before torch/timm are imported; returns the NPU specs."""
    import hwmodels
    from simulator import preflight

    # the recipe's ranges (reference.recipes.config._RANGES): each flag is named, not an internal layer
    for flag, v, lo, hi in (("--wbits", args.wbits, 2, 8), ("--abits", args.abits, 2, 8),
                            ("--residual-bits", args.residual_bits, 8, 24), ("--edge-bits", args.edge_bits, 0, 8)):
        if not lo <= v <= hi:
            raise InputError(f"cost: {flag}: expected {lo}..{hi}, got {v}")
    preflight.check_flags(args)
    preflight.check_outputs([("--json", args.json), ("--csv", args.csv)])
    return hwmodels.load_distinct(args.hw)


def _csv(name: str, w: int, a: int, reports) -> str:
    import csv
    import io

    from simulator.provenance import tool_info

    info = tool_info()
    cols = ("model", "w_bits", "a_bits", "accelerator", "accelerator_file", "macs", "bops", "cycles", "latency_ms",
            "images_per_s", "energy_uj", "offchip_mb", "pe_utilisation", "tool_version", "created_utc")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in reports:
        c = r.to_dict()["per_image"]
        writer.writerow({"model": name, "w_bits": w, "a_bits": a, "accelerator": r.npu.name,
                         "accelerator_file": r.npu.source, **{k: c[k] for k in cols[5:13]},
                         "tool_version": info["version"], "created_utc": info["created_utc"]})
    return buf.getvalue()


def _arch(graph) -> dict:
    """Input size, token count of the residual stream and classes of a lowered graph (JSON-ready)."""
    from simulator import ir

    shapes = ir.tensor_shapes(graph, batch=1)
    norms = [op.inputs[0] for op in graph.ops if op.kind == "layer_norm" and len(shapes[op.inputs[0]]) == 3]
    return {"img_size": list(graph.image_size), "in_chans": int(graph.in_chans),
            "num_tokens": int(shapes[norms[0]][1]) if norms else None,
            "outputs": {t: list(shapes[t][1:]) for t in graph.outputs}, "ops": len(graph.ops)}


def cost_main(argv: list[str]) -> int:
    from simulator import progress

    args = _parser().parse_args(argv)
    npus = _check(args)
    with progress.phase("importing torch and timm"):
        import hwmodels
        from reference.lowering import lower
        from reference.models import load_model
        from reference.recipes.config import recipe_from_dict
        from reference.recipes.static_graph import shape_only_graph
        from simulator.cli import _write_text_atomic, write_json_atomic
        from simulator.graph_trace import graph_layers
        from simulator.provenance import tool_info
        from simulator.summary import accelerator_record
        from simulator.trace import Trace
    model = load_model(args.model, num_classes=args.num_classes, img_size=args.img_size, mean=args.mean,
                       std=args.std, crop_pct=args.crop_pct, interpolation=args.interpolation,
                       random_weights_ok=True, shapes_only=True)
    name = args.model or "vit_digits"
    cfg = recipe_from_dict({"recipe": "static", "w_bits": args.wbits, "a_bits": args.abits,
                            "residual_bits": args.residual_bits, "edge_bits": args.edge_bits}, where="cost")
    with progress.phase(f"lowering {name}"):
        qg = shape_only_graph(lower(model), cfg, model_name=name)
    arch = _arch(qg.graph)
    trace = Trace(model=name, recipe=qg.meta["label"], layers=graph_layers(qg), n_images=1)
    reports = [hwmodels.estimate(trace, npu) for npu in npus]
    print(f"model {name}  {arch['img_size'][0]}x{arch['img_size'][1]}  {arch['num_tokens']} tokens  "
          f"W{args.wbits}A{args.abits} (shapes only)")
    print(hwmodels.format_report(reports[0]) if len(reports) == 1 else hwmodels.format_comparison(reports))
    if args.json:
        write_json_atomic(args.json, {"tool": tool_info(), "model": name, "arch": arch, "w_bits": args.wbits,
                                      "a_bits": args.abits,
                                      "hardware": [r.to_dict() | {"accelerator": accelerator_record(npu)}
                                                   for r, npu in zip(reports, npus)]})
    if args.csv:
        _write_text_atomic(args.csv, _csv(name, args.wbits, args.abits, reports), "--csv")
    return 0
