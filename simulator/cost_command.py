"""``simulate cost``: hardware cost of a timm ViT from its shapes alone.

    simulate cost --model deit_base_patch16_384 --hw configs/npu_int8.yaml
    simulate cost --model deit_small_patch16_224 --img-size 288 --wbits 4 --abits 8 \\
                  --hw configs/npu_int8.yaml configs/npu_w4a8.yaml --json cost.json

No checkpoint and no images: the model is built with ``pretrained=False`` only
to read its architecture, and the graph gets uniform bit-widths. Part of the
CLI's composition root (imports reference and hwmodels lazily).
"""

from __future__ import annotations

import argparse

from simulator.errors import InputError

__all__ = ["cost_main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise InputError(f"cost: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="simulate cost", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="timm ViT name (default: the bundled digits ViT)")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default: the model's)")
    p.add_argument("--wbits", type=int, default=8)
    p.add_argument("--abits", type=int, default=8)
    p.add_argument("--residual-bits", type=int, default=16)
    p.add_argument("--edge-bits", type=int, default=8, help="patch embed / head bits (0: same as w/a)")
    p.add_argument("--hw", nargs="+", required=True, metavar="NPU.yaml")
    p.add_argument("--json", default=None, metavar="PATH")
    return p


def _arch_model(name: str | None, img_size: int | None):
    from reference.models import DEFAULT_MODEL, load_model

    if img_size is None or name in (None, DEFAULT_MODEL):
        if img_size is not None:
            raise InputError("cost: --img-size applies to timm model names, not the bundled default")
        return load_model(name)
    import timm

    try:
        return timm.create_model(name, pretrained=False, img_size=img_size)
    except (RuntimeError, ValueError, TypeError) as e:
        raise InputError(f"cost: --model {name} --img-size {img_size}: {str(e).splitlines()[0]}") from None


def cost_main(argv: list[str]) -> int:
    import hwmodels
    from reference.vit_float import check_supported, vit_arch
    from simulator.cli import write_json_atomic
    from simulator.graph import static_layers
    from simulator.shapes import shape_only_qvit
    from simulator.trace import Trace

    args = _parser().parse_args(argv)
    # the recipe's ranges (reference.recipes.config._RANGES): each flag is named, not an internal layer
    for flag, v, lo, hi in (("--wbits", args.wbits, 2, 8), ("--abits", args.abits, 2, 8),
                            ("--residual-bits", args.residual_bits, 8, 24), ("--edge-bits", args.edge_bits, 0, 8)):
        if not lo <= v <= hi:
            raise InputError(f"cost: {flag}: expected {lo}..{hi}, got {v}")
    npus = [hwmodels.load(p) for p in args.hw]
    model = _arch_model(args.model, args.img_size)
    check_supported(model)
    arch = vit_arch(model)
    name = args.model or "vit_digits"
    q = shape_only_qvit(arch, args.wbits, args.abits, args.residual_bits, args.edge_bits, model_name=name)
    trace = Trace(model=name, recipe=q.meta["label"], layers=static_layers(q), n_images=1)
    reports = [hwmodels.estimate(trace, npu) for npu in npus]
    print(f"model {name}  {arch['img_size'][0]}x{arch['img_size'][1]}  {arch['num_tokens']} tokens  "
          f"W{args.wbits}A{args.abits} (shapes only)")
    print(hwmodels.format_report(reports[0]) if len(reports) == 1 else hwmodels.format_comparison(reports))
    if args.json:
        write_json_atomic(args.json, {"model": name, "arch": arch, "w_bits": args.wbits, "a_bits": args.abits,
                                      "hardware": [r.to_dict() for r in reports]})
    return 0
