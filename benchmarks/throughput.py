"""Throughput: integer simulator (and fake-quant) vs PyTorch fp32 eager timm.

Prints the CPU (``lscpu`` model name and the flags that decide GEMM speed),
the thread pools, the measured rate of every exact GEMM backend for each
shape class the model runs (GOPS = 2 x MACs / s; `simulator.kernels.gemm_choice`,
measured afresh here and written to the per-machine cache), then images/s of
fp32 eager, the simulator (and, with ``--fakequant``, the fake-quant executor)
and their ratios to fp32. Executors are timed alternately in one run on the
same images, best of ``--repeats``; wall time and the process's CPU time are
both reported (on a shared machine the CPU-time ratio is the steadier one).
Random weights are fine for timing (``pretrained=False``).

    python benchmarks/throughput.py                                 # deit_small, 224 px, batch 16, W8A8
    python benchmarks/throughput.py --model deit_tiny_patch16_224 --img-size 384    # 577 tokens
    python benchmarks/throughput.py --threads 1 --backend int_mm --fakequant
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import numpy as np
import torch

SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "asimddp", "i8mm")


def cpu_description() -> str:
    """``lscpu``'s model name and which of `SPEED_FLAGS` it lists (``/proc/cpuinfo`` as a fallback)."""
    model, flags = "", set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and not model:
                model = value.strip()
            elif key.strip() == "Flags":
                flags.update(value.split())
    except (OSError, subprocess.SubprocessError):
        pass
    if not model or not flags:
        from simulator.kernels.gemm_choice import machine_facts
        facts = machine_facts()
        model, flags = model or facts["cpu"], flags or set(facts["flags"])
    have = [f for f in SPEED_FLAGS if f in flags]
    return f"{model or 'unknown CPU'}; flags: {' '.join(have) or 'none of ' + ' '.join(SPEED_FLAGS)}"


def best_times(fns: dict, repeats: int) -> dict:
    """{name: (best wall s, best process CPU s)} over ``repeats`` alternating calls (after one warm-up each)."""
    for fn in fns.values():
        fn()
    best = {k: [float("inf"), float("inf")] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            best[k][0] = min(best[k][0], time.perf_counter() - w)
            best[k][1] = min(best[k][1], time.process_time() - c)
    return {k: tuple(v) for k, v in best.items()}


def gemm_table(report: dict) -> list[str]:
    """One row per shape class: each backend's GOPS and the chosen one."""
    names = ("numba", "int_mm", "blas_f32", "blas_f64")
    rows = [f"  {'shape class':<40}" + "".join(f"{n:>10}" for n in names) + "   chosen"]
    for cls, rec in report["classes"].items():
        g = rec["gops"]
        rows.append(f"  {cls:<40}" + "".join(f"{g[n]:10.1f}" if n in g else f"{'-':>10}" for n in names)
                    + f"   {rec['backend']}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (timm img_size; 384 -> 577 tokens)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--wbits", type=int, default=8)
    p.add_argument("--abits", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: all cores)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--cached", action="store_true",
                   help="use the cached backend choices instead of measuring every backend afresh")
    p.add_argument("--fakequant", action="store_true", help="also time the fake-quant executor")
    p.add_argument("--compile", action="store_true",
                   help="fake-quant with compile=True (every integer stage TorchInductor-fused; default: compile=None, "
                        "auto: fused on large tensors; compile time not timed)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import timm

    from reference.fakequant_ops import GraphFakeQuantExecutor as FakeQuantExecutor
    from reference.recipes import quantize
    from reference.recipes.config import RecipeConfig
    from simulator.engines import configure_threads
    from simulator.int_ops import GraphIntegerExecutor as IntegerExecutor
    from simulator.kernels import gemm, gemm_choice

    threads = configure_threads(args.threads)
    if not args.cached:       # measure every backend of every shape class in this run (and re-cache)
        gemm._chooser = gemm_choice.BackendChooser(gemm_choice.cache_path(),
                                                   lambda: gemm_choice.machine_facts(gemm.torch_facts()),
                                                   remeasure=True)
    torch.manual_seed(0)
    kw = {} if args.img_size is None else {"img_size": args.img_size}
    model = timm.create_model(args.model, pretrained=False, **kw).eval()
    c, h, w = model.pretrained_cfg.get("input_size", (3, 224, 224))
    if args.img_size is not None:
        h = w = args.img_size
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    x = np.random.default_rng(0).standard_normal((args.batch, c, h, w)).astype(np.float32)
    t = time.perf_counter()
    qvit = quantize(model, x[:8], RecipeConfig(w_bits=args.wbits, a_bits=args.abits, calib_images=8),
                    model_name=args.model)
    t_quant = time.perf_counter() - t
    sim = IntegerExecutor(qvit, gemm_backend=args.backend)
    t = time.perf_counter()
    sim.run(x, batch_size=args.batch, keep_codes=False)       # numba load + GEMM backend measurement
    t_first = time.perf_counter() - t

    xt = torch.from_numpy(x)

    def fp32():
        with torch.no_grad():
            model(xt)

    fns = {"fp32": fp32, "simulator": lambda: sim.run(x, batch_size=args.batch, keep_codes=False)}
    if args.fakequant:
        for nonlinear in ("integer", "float"):
            fq = FakeQuantExecutor(qvit, nonlinear, compile=True if args.compile else None)
            key = f"fakequant_{'int' if nonlinear == 'integer' else 'float'}{'_compiled' if args.compile else ''}"
            fns[key] = (lambda fq=fq: fq.run(x, batch_size=args.batch, keep_codes=False))
    times = best_times(fns, args.repeats)
    report = sim.gemm_report()
    print(f"CPU: {cpu_description()}")
    print(f"threads: torch {threads['torch']}, numba {threads['numba']} (numba threading layer "
          f"{threads['numba_layer']})")
    print(f"{args.model}  {h}x{w} px ({tokens} tokens)  batch {args.batch}  W{args.wbits}A{args.abits}  "
          f"backend {args.backend}")
    print(f"  calibration + freeze {t_quant:.1f} s; simulator first call (JIT load, backend measurement) "
          f"{t_first:.2f} s")
    print("GEMM backends, measured rate per shape class (GOPS = 2 x MACs / s; '-': not measured: "
          "not exact for that class, or --backend fixed):")
    print("\n".join(gemm_table(report)))
    wall0, cpu0 = times["fp32"]
    for k, (wall, cpu) in times.items():
        print(f"  {k:<18} {args.batch / wall:8.2f} images/s (wall)   ratio to fp32 {wall0 / wall:5.2f} (wall), "
              f"{cpu0 / cpu:5.2f} (CPU time)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cpu": cpu_description(), "threads": threads, "tokens": tokens,
                       "images_per_s": {k: args.batch / v[0] for k, v in times.items()},
                       "cpu_s_per_batch": {k: v[1] for k, v in times.items()},
                       "gemm_backend": report, "calibration_s": t_quant, "first_call_s": t_first}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
