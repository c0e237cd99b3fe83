"""End to end: the whole ``simulate`` job on DeiT-S against an fp32-only evaluation, phase by phase.

What it runs (every measured step in a fresh process, so start-up and peaks do not mix):

1. a temporary ImageFolder of ``--images`` seeded random 224x224 RGB PNGs (10 classes);
2. **fp32-only evaluation**: one process that imports torch/timm, builds the model (random weights,
   ``torch.manual_seed(0)``), loads the images with the model's eval transform (`reference.data`) and
   runs the fp32 forward over all of them -- what evaluating the float model alone costs;
3. **the simulate job**: ``python -m simulator.cli --model M --data DIR --calib DIR --images N
   --hw npu_int8 --json ... --save-qvit ...`` (static W8A8), its stderr read line by line: the
   progress lines mark the phases (imports, model build, image loading, calibration, evaluation,
   cost + outputs); the job's ``--json`` splits the evaluation into fp32, fake-quant integer-only,
   fake-quant float-nonlinear and simulator seconds;
4. **peak memory of each executor** on one batch (``--batch-size`` images, codes kept as the job keeps
   them): one process per executor, loading the QuantizedGraph the job saved.

Each phase is printed with its wall time and its ratio to the fp32-only evaluation's total, and the
whole job's ratio (the issue-15 figure: whole ``simulate`` process / fp32-only evaluation process).

Peak RSS: a thread samples the resident set of the measured process every `SAMPLE_S` seconds
(psutil: the job's process and its children, from this process; inside the per-executor processes,
their own); a phase's peak is the largest sample taken while it ran, so a spike shorter than the
interval can be missed. ``ru_maxrss`` (the kernel's high-water mark, monotonic) of each child is
printed too as a cross-check of the overall peak.

Runs against another checkout for a "before" figure: ``--repo PATH`` runs every child from PATH (its
code, its CLI); a job that lacks ``--reference`` or the newer JSON fields degrades to what it reports.

    python benchmarks/end_to_end.py                                # deit_small, 512 images, batch 16
    python benchmarks/end_to_end.py --images 128 --reference none
    python benchmarks/end_to_end.py --repo /tmp/before --images 128      # the same on an older commit
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE_S = 0.02
CLASSES = 10
IMAGE_PX = 224
# stderr progress line -> phase (`simulator.progress` writes "simulate: <desc> ..." when a phase starts)
PHASES = (("importing", "imports"), ("building", "model build"), ("loading", "image loading"),
          ("calibrating", "calibration"), ("evaluating", "evaluation"))


def cpu_description() -> str:
    """``lscpu`` model name, core count and the SIMD flags that decide the int8 GEMM paths."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU (no lscpu)"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")
    have = " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"
    return f"{fields.get('Model name', '?').strip()}, {os.cpu_count()} cores, flags: {have}"


class RssSampler:
    """Samples the RSS (bytes) of ``pid`` (and its children) every `SAMPLE_S` s in a thread: [(t, rss)]."""

    def __init__(self, pid: int):
        import psutil

        self.proc, self.samples, self._stop = psutil.Process(pid), [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._rss()
            if rss:
                self.samples.append((time.perf_counter(), rss))
            self._stop.wait(SAMPLE_S)

    def stop(self) -> list:
        self._stop.set()
        self._thread.join()
        return self.samples

    def peak(self, t0: float, t1: float) -> int:
        return max((r for t, r in self.samples if t0 <= t <= t1), default=0)


def write_images(root: str, n: int, seed: int = 0) -> None:
    """``n`` seeded random RGB PNGs in ``CLASSES`` class folders (the same files for a given n, seed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        os.makedirs(os.path.join(root, f"class_{c:02d}"), exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(os.path.join(root, f"class_{i % CLASSES:02d}", f"{i:05d}.png"))


# ----------------------------------------------------------------------------------- children


def _child_fp32(args) -> dict:
    """fp32-only evaluation: imports, model, images, forward; whole-process time."""
    import psutil

    start = psutil.Process().create_time()
    import numpy as np
    import torch

    from reference.data import load_dataset
    from reference.models import load_model

    torch.manual_seed(0)
    model = load_model(args.model, random_weights_ok=True)
    images, _ = load_dataset(args.data, model, split="test", limit=args.images)
    t = time.perf_counter()
    with torch.no_grad():
        preds = [model(torch.as_tensor(images[s:s + args.batch_size])).argmax(1).numpy()
                 for s in range(0, len(images), args.batch_size)]
    forward = time.perf_counter() - t
    return {"process_s": time.time() - start, "forward_s": forward, "images": int(len(np.concatenate(preds)))}


def _child_executor(args) -> dict:
    """One executor on one batch, codes kept as the job keeps them; RSS before and peak during."""
    import psutil
    import torch

    from reference.data import load_dataset
    from reference.models import load_model

    torch.manual_seed(0)
    model = load_model(args.model, random_weights_ok=True)
    x, _ = load_dataset(args.data, model, split="test", limit=args.batch_size)
    run = None
    if args.child == "fp32":
        xt = torch.as_tensor(x)

        def run():
            with torch.no_grad():
                model(xt)
    else:
        from simulator.qgraph import QuantizedGraph

        qg = QuantizedGraph.load(args.qgraph)
        if args.child == "simulator":
            from simulator.int_ops import GraphIntegerExecutor

            ex, keep = GraphIntegerExecutor(qg), True
            ex.run(x[:1], keep_codes=False)               # JIT compile / cache load outside the measurement
        else:
            from reference.fakequant_ops import GraphFakeQuantExecutor

            ex, keep = GraphFakeQuantExecutor(qg, "integer" if args.child == "fq_int" else "float"), \
                args.child == "fq_int"

        def run():
            ex.run(x, batch_size=args.batch_size, keep_codes=keep)
    before = psutil.Process().memory_info().rss
    sampler = RssSampler(os.getpid())
    t = time.perf_counter()
    run()
    seconds = time.perf_counter() - t
    samples = sampler.stop()
    peak = max([r for _, r in samples] + [psutil.Process().memory_info().rss])
    return {"before_mb": before / 2**20, "peak_mb": peak / 2**20, "seconds": seconds,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_child(args, kind: str, extra=()) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--model", args.model, "--data", args.data,
           "--images", str(args.images), "--batch-size", str(args.batch_size), "--repo", args.repo, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=args.repo, env=_env(args))
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env(args) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = args.repo + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ----------------------------------------------------------------------------------- the job


def _supports_reference(args) -> bool:
    out = subprocess.run([sys.executable, "-m", "simulator.cli", "--help"], capture_output=True, text=True,
                         cwd=args.repo, env=_env(args))
    return "--reference" in out.stdout


def run_job(args, work: str) -> dict:
    """The simulate job in a subprocess: whole-process wall, stderr phase marks, sampled RSS, its JSON."""
    js, qg = os.path.join(work, "job.json"), os.path.join(work, "job_qgraph.npz")
    cmd = [sys.executable, "-m", "simulator.cli", "--model", args.model, "--data", args.data, "--calib", args.data,
           "--images", str(args.images), "--batch-size", str(args.batch_size), "--hw", "npu_int8",
           "--json", js, "--save-qvit", qg]
    ref = args.reference if _supports_reference(args) else None
    if ref is not None:
        cmd += ["--reference", ref]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=args.repo, env=_env(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    sampler = RssSampler(proc.pid)
    marks, err_lines = [], []
    for line in proc.stderr:                     # the progress lines arrive as the phases start
        err_lines.append(line.rstrip())
        text = line[len("simulate: "):] if line.startswith("simulate: ") else ""
        for key, phase in PHASES:
            if text.startswith(key) and (not marks or marks[-1][1] != phase):
                marks.append((time.perf_counter(), phase))
        if text.startswith("evaluating") and ": done" in text:
            marks.append((time.perf_counter(), "cost + outputs"))
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)          # this child's own rusage (ru_maxrss: its high-water mark)
    proc.returncode = os.waitstatus_to_exitcode(status)
    t_end = time.perf_counter()
    sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"simulate failed ({proc.returncode}):\n" + "\n".join(err_lines[-5:]))
    marks = [(t0, "start-up")] + marks
    phases = [{"phase": name, "s": (marks[i + 1][0] if i + 1 < len(marks) else t_end) - t,
               "peak_mb": sampler.peak(t, marks[i + 1][0] if i + 1 < len(marks) else t_end) / 2**20}
              for i, (t, name) in enumerate(marks)]
    with open(js) as f:
        result = json.load(f)
    return {"wall_s": t_end - t0, "phases": phases, "json": result, "qgraph": qg, "reference": ref,
            "peak_mb": max(r for _, r in sampler.samples) / 2**20, "stdout": stdout,
            "ru_maxrss_mb": usage.ru_maxrss / 1024}


# ----------------------------------------------------------------------------------- report


def report(args, fp32: dict, job: dict, peaks: dict) -> dict:
    base = fp32.get("process_s")
    r = job["json"]
    e = r.get("executor_s", {})
    ratio = (lambda s: f"{s / base:8.2f}x") if base else (lambda s: "       -")
    print(f"CPU: {cpu_description()}; load average at start {args.load_start}, at end {os.getloadavg()[0]:.2f} "
          "(shared machine: other processes ran)")
    print(f"simulate {args.model}, {args.images} synthetic images {IMAGE_PX} px, static W8A8, batch "
          f"{args.batch_size}, --reference {job['reference'] or '(not supported: every image)'}; repo {args.repo}")
    if base:
        print(f"fp32-only evaluation (imports, model, images, forward; one process): {base:.1f} s "
              f"(forward {fp32['forward_s']:.1f} s)")
    else:
        print(f"fp32-only evaluation failed: {fp32.get('error')}")
    print(f"  {'phase of the simulate job':<34}{'wall s':>9}{'/ fp32-only':>12}{'peak RSS MB':>13}")
    for p in job["phases"]:
        print(f"  {p['phase']:<34}{p['s']:9.1f}{ratio(p['s']):>12}{p['peak_mb']:13.0f}")
        if p["phase"] == "evaluation" and e:
            names = (("fp32", "fp32"), ("fakequant_integer", "fake-quant int-only"),
                     ("fakequant_float_nonlinear", "fake-quant float-nonlinear"), ("simulator", "simulator"))
            for key, name in names:
                if key in e and (e[key] or not key.startswith("fakequant")):
                    print(f"    {name:<32}{e[key]:9.1f}{ratio(e[key]):>12}{peaks.get(key, ''):>13}")
                elif key in e:
                    print(f"    {name:<32}{'not run':>9}{'':>12}{peaks.get(key, ''):>13}")
    if "calibration_s" in r:
        print(f"  (calibration as the job times it: {r['calibration_s']:.1f} s)")
    print(f"  whole simulate process             {job['wall_s']:9.1f}{ratio(job['wall_s']):>12}"
          f"{job['peak_mb']:13.0f}")
    if "since_process_start_s" in r:
        print(f"  (the job's own line: {r['wall_time_s']:.1f} s in-process, {r['since_process_start_s']:.1f} s since "
              "the interpreter started)")
    print(f"  executor peak RSS MB: on one batch of {args.batch_size} in a fresh process (codes kept as the job "
          f"keeps them); ru_maxrss of the simulate process {job['ru_maxrss_mb']:.0f} MB")
    bx = r.get("bit_exact_images")
    ref = r.get("reference", {})
    print(f"  bit-exact: not checked (--reference none)" if bx is None else
          f"  bit-exact {bx}/{ref.get('checked_images', r.get('images'))} images checked of {r.get('images')}")
    return {"cpu": cpu_description(), "args": vars(args), "fp32_only": fp32, "job_wall_s": job["wall_s"],
            "job_phases": job["phases"], "job_peak_mb": job["peak_mb"], "executor_s": e,
            "executor_peaks": peaks, "ratio_whole_job": job["wall_s"] / base if base else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--reference", default="sample", choices=("full", "sample", "none"))
    p.add_argument("--repo", default=os.path.dirname(HERE), help="checkout to run (default: this one)")
    p.add_argument("--data", default=None, help="an ImageFolder to use instead of synthetic images")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--qgraph", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.repo = os.path.abspath(args.repo)
    if args.child:
        sys.path.insert(0, args.repo)
        out = _child_fp32(args) if args.child == "fp32_only" else _child_executor(args)
        print(json.dumps(out))
        return 0
    args.load_start = f"{os.getloadavg()[0]:.2f}"
    work = tempfile.mkdtemp(prefix="vit-intsim-e2e-")
    try:
        if args.data is None:
            args.data = os.path.join(work, "images")
            write_images(args.data, args.images)
        fp32 = _run_child(args, "fp32_only")
        job = run_job(args, work)
        peaks = {}
        for key, kind in (("fp32", "fp32"), ("fakequant_integer", "fq_int"),
                          ("fakequant_float_nonlinear", "fq_float"), ("simulator", "simulator")):
            res = _run_child(args, kind, ["--qgraph", job["qgraph"]])
            peaks[key] = f"{res['peak_mb']:.0f}" if "peak_mb" in res else "error"
        out = report(args, fp32, job, peaks)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
