"""Throughput: integer simulator (and fake-quant) vs PyTorch fp32 eager timm.

Prints images/s of each and the ratios to fp32, all measured in one run on
the same images. Random weights are fine for timing (``pretrained=False``).

    python benchmarks/throughput.py                      # deit_small, batch 16, W8A8
    python benchmarks/throughput.py --model deit_tiny_patch16_224 --batch 64 --fakequant
    python benchmarks/throughput.py --fakequant --compile     # fake-quant with fused integer stages
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def best_rate(fn, batch: int, repeats: int) -> float:
    """images/s of the fastest of ``repeats`` timed calls (after one warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return batch / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--wbits", type=int, default=8)
    p.add_argument("--abits", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch/numba threads (default: all cores)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--fakequant", action="store_true", help="also time the fake-quant executor")
    p.add_argument("--compile", action="store_true",
                   help="fake-quant with compile=True (every integer stage TorchInductor-fused; default: compile=None, "
                        "auto: fused on large tensors; compile time not timed)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import timm
    import numba

    from reference.fakequant_ops import GraphFakeQuantExecutor as FakeQuantExecutor
    from reference.recipes import quantize
    from reference.recipes.config import RecipeConfig
    from simulator.int_ops import GraphIntegerExecutor as IntegerExecutor

    if args.threads:
        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    c, h, w = model.pretrained_cfg.get("input_size", (3, 224, 224))
    x = np.random.default_rng(0).standard_normal((args.batch, c, h, w)).astype(np.float32)
    t = time.perf_counter()
    qvit = quantize(model, x[:8], RecipeConfig(w_bits=args.wbits, a_bits=args.abits, calib_images=8),
                    model_name=args.model)
    t_quant = time.perf_counter() - t
    sim = IntegerExecutor(qvit, gemm_backend=args.backend)
    t = time.perf_counter()
    sim.run(x[:1], keep_codes=False)
    t_first = time.perf_counter() - t

    xt = torch.from_numpy(x)

    def fp32():
        with torch.no_grad():
            model(xt)

    rates = {"fp32": best_rate(fp32, args.batch, args.repeats),
             "simulator": best_rate(lambda: sim.run(x, batch_size=args.batch, keep_codes=False),
                                     args.batch, args.repeats)}
    if args.fakequant:
        for nonlinear in ("integer", "float"):
            fq = FakeQuantExecutor(qvit, nonlinear, compile=True if args.compile else None)
            key = f"fakequant_{'int' if nonlinear == 'integer' else 'float'}{'_compiled' if args.compile else ''}"
            rates[key] = best_rate(lambda: fq.run(x, batch_size=args.batch, keep_codes=False),
                                    args.batch, args.repeats)
    print(f"{args.model}  batch {args.batch}  W{args.wbits}A{args.abits}  backend {args.backend}  "
          f"threads {torch.get_num_threads()}")
    print(f"  calibration + freeze {t_quant:.1f} s; simulator first call (JIT load) {t_first:.2f} s")
    for k, v in rates.items():
        ratio = v / rates["fp32"]
        print(f"  {k:<10} {v:8.2f} images/s   ratio to fp32 {ratio:5.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "images_per_s": rates, "calibration_s": t_quant,
                       "first_call_s": t_first}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
