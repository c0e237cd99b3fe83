"""Swin-T on the integer graph: W8A8 agreement, npu_int8 cost next to DeiT-S, throughput.

    python benchmarks/swin.py                       # all three parts
    python benchmarks/swin.py --part agreement --images 64
    python benchmarks/swin.py --part cost
    python benchmarks/swin.py --part throughput --batch 16

* agreement: random-weight ``swin_tiny_patch4_window7_224`` at 224 px (timm's
  init, and that init plus `reference.lowering.coverage.perturb_` noise),
  static W8A8 calibrated on 32 synthetic images (seeded standard normal, in
  the normalised input space), top-1 of the integer simulator vs the model's
  own fp32 forward on 64 other synthetic images; bit-exact images between
  the numba and torch graph executors on the first 8 of them.
* cost: the npu_int8 table (GMACs, GBOPs, DRAM MB, cycles, bound) of
  swin_tiny and deit_small from shapes alone (`simulate cost`'s path).
* throughput: images/s of the integer simulator (numba graph executor, W8A8)
  vs timm fp32 eager at batch 16, best of ``--repeats``, same images.

Prints Markdown tables; name the CPU and the machine load next to timings.
Offline, random weights.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import timm
import torch
from throughput import best_rate   # benchmarks/ is sys.path[0] when run as a script

NAME = "swin_tiny_patch4_window7_224"


def _model(name: str, seed: int = 0, perturb: bool = False):
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False).eval()
    if perturb:
        from reference.lowering.coverage import perturb_
        perturb_(m, seed + 1)
    return m


def _static_w8a8(model, calib, name):
    from reference.lowering import lower
    from reference.recipes.config import load_recipe
    from reference.recipes.static_graph import quantize_graph
    cfg = replace(load_recipe("configs/recipes/static_w8a8.yaml"), calib_images=len(calib))
    return quantize_graph(lower(model), calib, cfg, model_name=name)


def agreement(n_images: int, n_calib: int = 32, n_exact: int = 8) -> None:
    from reference.fakequant_ops import GraphFakeQuantExecutor
    from simulator.int_ops import GraphIntegerExecutor
    from simulator.results import bit_exact_images
    print("| model (random weights) | weights | img | W8A8 vs fp32 top-1 agreement | fp32 classes used | "
          f"bit-exact int vs fake-quant (first {n_exact}) | saturated accumulators | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for perturb in (False, True):
        t0 = time.time()
        model = _model(NAME, perturb=perturb)
        rng = np.random.default_rng(0)
        images = rng.standard_normal((n_calib + n_images, 3, 224, 224)).astype(np.float32)
        calib, test = images[:n_calib], images[n_calib:]
        qg = _static_w8a8(model, calib, NAME)
        with torch.no_grad():
            ref = torch.cat([model(torch.from_numpy(test[s:s + 16])) for s in range(0, len(test), 16)]).argmax(-1)
        ri = GraphIntegerExecutor(qg).run(test, batch_size=16, keep_codes=False)   # codes of 64 images: ~6 GB
        exact = 0
        for i in range(n_exact):        # every code of every tensor, one image at a time
            a = GraphIntegerExecutor(qg).run(test[i:i + 1])
            f = GraphFakeQuantExecutor(qg).run(test[i:i + 1])
            exact += int(bit_exact_images(a.codes, f.codes).sum())
        agree = float((ri.predictions == ref.numpy()).mean())
        print(f"| `{NAME}` | {'timm init + noise' if perturb else 'timm init'} | 224 | {100 * agree:.1f}% "
              f"({int(round(agree * len(test)))}/{len(test)}) | {len(set(ref.tolist()))} | {exact}/{n_exact} | "
              f"{sum(ri.trace.overflows.values())} | {time.time() - t0:.0f} |", flush=True)


def cost(hw: str = "configs/npu_int8.yaml") -> None:
    import hwmodels
    from reference.lowering import lower
    from reference.recipes.config import RecipeConfig
    from reference.recipes.static_graph import shape_only_graph
    from simulator.graph_trace import graph_layers
    from simulator.trace import Trace
    npu = hwmodels.load_distinct([hw])[0]
    print(f"| model ({hw}, W8A8, shapes only) | GMACs | GBOPs | DRAM MB | cycles | latency ms | bound |")
    print("|---|---|---|---|---|---|---|")
    for name in (NAME, "deit_small_patch16_224"):
        qg = shape_only_graph(lower(_model(name)), RecipeConfig(w_bits=8, a_bits=8), name)
        rep = hwmodels.estimate(Trace(model=name, recipe="static_w8a8", layers=graph_layers(qg), n_images=1), npu)
        c = rep.to_dict()["per_image"]
        print(f"| `{name}` | {c['macs'] / 1e9:.3f} | {c['bops'] / 1e9:.1f} | {c['offchip_mb']:.1f} | "
              f"{c['cycles']:,.0f} | {c['latency_ms']:.2f} | {c.get('bound', '?')} |", flush=True)


def throughput(batch: int, repeats: int) -> None:
    from simulator.int_ops import GraphIntegerExecutor
    model = _model(NAME)
    rng = np.random.default_rng(1)
    qg = _static_w8a8(model, rng.standard_normal((16, 3, 224, 224)).astype(np.float32), NAME)
    x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
    ex = GraphIntegerExecutor(qg)
    with torch.no_grad():
        fp32 = best_rate(lambda: model(torch.from_numpy(x)), batch, repeats)
    sim = best_rate(lambda: ex.run(x, batch_size=batch, keep_codes=False), batch, repeats)
    print(f"| `{NAME}` batch {batch} | fp32 eager {fp32:.2f} img/s | integer simulator (numba, W8A8) {sim:.2f} img/s "
          f"| ratio {sim / fp32:.3f} | torch threads {torch.get_num_threads()} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("agreement", "cost", "throughput", "all"), default="all")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.part in ("cost", "all"):
        cost()
    if args.part in ("agreement", "all"):
        agreement(args.images)
    if args.part in ("throughput", "all"):
        throughput(args.batch, args.repeats)


if __name__ == "__main__":
    main()
