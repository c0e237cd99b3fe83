"""Full throughput table for design reviews (issue 9), in one run.

For each model x batch size x recipe: images/s of (a) PyTorch fp32 eager timm
inference, (b) the fake-quant executor, (c) the integer simulator, the ratios
to (a), and the peak resident memory of a process doing only that point
(each point runs in a fresh subprocess so peaks do not mix). Then: images/s vs
thread count and vs image size (sequence length), the numba cold-start time
(empty cache) vs a warm start, and the cost model's time for a 100-point sweep.

    python benchmarks/scaling.py                 # the full table (tens of minutes on 2 cores)
    python benchmarks/scaling.py --quick         # deit_tiny, batch 16 only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _point(model: str, batch: int, wbits: int, abits: int, threads: int, img: int | None, which: str) -> dict:
    """Run one measurement in a subprocess; returns its JSON (rates + peak RSS)."""
    code = f"""
import json, resource, sys, time
import numpy as np, torch, numba, timm
sys.path.insert(0, {os.path.dirname(HERE)!r})
from reference.recipes import quantize
from reference.recipes.config import RecipeConfig
from reference.fakequant_ops import GraphFakeQuantExecutor as FakeQuantExecutor
from simulator.int_ops import GraphIntegerExecutor as IntegerExecutor
torch.set_num_threads({threads}); numba.set_num_threads({threads})
torch.manual_seed(0)
kw = {{}} if {img!r} is None else {{"img_size": {img!r}}}
m = timm.create_model({model!r}, pretrained=False, **kw).eval()
c, h, w = 3, m.patch_embed.img_size[0], m.patch_embed.img_size[1]
x = np.random.default_rng(0).standard_normal(({batch}, c, h, w)).astype(np.float32)
q = quantize(m, x[:4], RecipeConfig(w_bits={wbits}, a_bits={abits}, calib_images=4))
def rate(fn, reps=2):
    fn(); best = 1e9
    for _ in range(reps):
        t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
    return {batch} / best
out = {{}}
if {which!r} in ("all", "fp32"):
    xt = torch.from_numpy(x)
    def f():
        with torch.no_grad(): m(xt)
    out["fp32"] = rate(f)
if {which!r} in ("all", "sim"):
    sim = IntegerExecutor(q)
    out["simulator"] = rate(lambda: sim.run(x, batch_size={batch}, keep_codes=False))
if {which!r} in ("all", "fq"):
    fq = FakeQuantExecutor(q)
    out["fakequant"] = rate(lambda: fq.run(x, batch_size={batch}, keep_codes=False), reps=1)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def _cold_start() -> tuple[float, float]:
    """First-call time of the simulator with an empty numba cache, then with a warm one."""
    code = f"""
import sys, time, numpy as np, torch
sys.path.insert(0, {os.path.dirname(HERE)!r})
t = time.perf_counter()
from reference.recipes import quantize
from reference.recipes.config import RecipeConfig
from reference.models import load_model
from reference.data import load_digits
from simulator.int_ops import GraphIntegerExecutor as IntegerExecutor
m = load_model(); x, _ = load_digits("calib")
q = quantize(m, x, RecipeConfig())
t = time.perf_counter(); IntegerExecutor(q).run(x[:4]); print(time.perf_counter() - t)
"""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        times = []
        for _ in range(2):
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            times.append(float(r.stdout.strip().splitlines()[-1]))
    return times[0], times[1]


def _cost_sweep_time(points: int = 100) -> float:
    sys.path.insert(0, os.path.dirname(HERE))
    import hwmodels
    import timm

    from reference.lowering import lower
    from reference.recipes.config import RecipeConfig
    from reference.recipes.static_graph import shape_only_graph
    from simulator.graph_trace import graph_layers
    from simulator.trace import Trace

    graph = lower(timm.create_model("deit_small_patch16_224", pretrained=False).eval())
    npus = [hwmodels.load(os.path.join(os.path.dirname(HERE), "configs", f)) for f in
            ("npu_int8.yaml", "npu_w4a8.yaml", "mcu_int8.yaml")]
    t = time.perf_counter()
    for i in range(points):
        bits = (8, 6, 4)[i % 3]
        q = shape_only_graph(graph, RecipeConfig(w_bits=bits, a_bits=bits))
        hwmodels.estimate(Trace("m", "r", graph_layers(q), 1), npus[i % 3])
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    models = ["deit_tiny_patch16_224"] if args.quick else ["deit_tiny_patch16_224", "deit_small_patch16_224"]
    batches = [16] if args.quick else [1, 16, 64]
    rows, res = [], {}
    print(f"{'model':<24}{'batch':>6}{'fp32 img/s':>12}{'fakequant':>11}{'simulator':>11}{'fq/fp32':>9}"
          f"{'sim/fp32':>9}{'peak MB':>9}")
    for model in models:
        for b in batches:
            r = _point(model, b, 8, 8, os.cpu_count() or 2, None, "all")
            res[f"{model}/b{b}"] = r
            print(f"{model:<24}{b:>6}{r['fp32']:>12.2f}{r['fakequant']:>11.2f}{r['simulator']:>11.2f}"
                  f"{r['fakequant'] / r['fp32']:>9.2f}{r['simulator'] / r['fp32']:>9.2f}{r['peak_rss_mb']:>9.0f}")
    print("\nthreads (deit_small, batch 16): images/s fp32 / simulator")
    for th in (1, 2):
        r = _point("deit_small_patch16_224", 16, 8, 8, th, None, "fp32")
        s = _point("deit_small_patch16_224", 16, 8, 8, th, None, "sim")
        res[f"threads{th}"] = {"fp32": r["fp32"], "simulator": s["simulator"]}
        print(f"  {th} thread(s): {r['fp32']:.2f} / {s['simulator']:.2f}  (ratio {s['simulator'] / r['fp32']:.2f})")
    print("\nsequence length (deit_tiny, batch 16): seconds per batch fp32 / simulator")
    for img in (224, 288, 384):
        r = _point("deit_tiny_patch16_224", 16, 8, 8, os.cpu_count() or 2, img, "fp32")
        s = _point("deit_tiny_patch16_224", 16, 8, 8, os.cpu_count() or 2, img, "sim")
        res[f"img{img}"] = {"fp32": r["fp32"], "simulator": s["simulator"]}
        tokens = (img // 16) ** 2 + 1
        print(f"  {img}px ({tokens} tokens): {16 / r['fp32']:.3f} s / {16 / s['simulator']:.3f} s")
    cold, warm = _cold_start()
    res["numba_first_call_s"] = {"cold_cache": cold, "warm_cache": warm}
    print(f"\nnumba first call: {cold:.1f} s with an empty cache, {warm:.2f} s with cache=True warm")
    t = _cost_sweep_time()
    res["cost_model_100_points_s"] = t
    print(f"cost model: 100-point sweep (deit_small, 3 accelerators) in {t:.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
