"""Cold start: the first ``simulate`` after an install, whole process, against a warm one.

Each trial runs ``python -m simulator.cli --no-progress [ARGS]`` (the default job: the bundled digits
ViT, static W8A8, 360 images) from ``--repo`` in a fresh process and times it from outside
(``time.perf_counter`` around the subprocess: interpreter start-up, every import, numba compilation,
calibration, the four executors, printing). **Cold**: an empty numba cache (``NUMBA_CACHE_DIR`` and
``XDG_CACHE_HOME`` pointed at a new temporary directory) and no compiled bytecode of the project's
own packages (their ``__pycache__/*.pyc`` files are deleted first) -- what the first run after
``pip install -e .`` meets; the installed libraries (torch, timm, numba) keep their bytecode, as after
a real install. **Warm**:
the same directories again, filled by the cold trial (a warm-start helper process, if the code has
one, is given time to finish first). Also printed: the job's own ``wall time`` line.

    python benchmarks/cold_start.py                      # this checkout, 3 cold + 3 warm trials
    python benchmarks/cold_start.py --repo /tmp/before --repo .   # an older checkout and this one, interleaved
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from end_to_end import cpu_description  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = ("simulator", "reference", "hwmodels", "reports")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def trial(repo: str, cache: str, extra: list[str], threads: int | None = None) -> tuple[float, str, float]:
    """(whole-process wall s, the job's wall-time line, CPU s of the simulate process itself -- a
    warm-start helper it launched is not waited for, so not counted)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(cache, "numba"), XDG_CACHE_HOME=cache, PYTHONPATH=repo)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    c0, t = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "simulator.cli", "--no-progress", *extra], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"simulate failed:\n{err}")
    line = next((ln.strip() for ln in out.splitlines() if "wall time" in ln), "?")
    return wall, line, _children_cpu() - c0


def _drop_project_bytecode(repo: str) -> None:
    """Delete the ``.pyc`` files of the project's own packages (a fresh checkout has none)."""
    for pkg in PACKAGES:
        for d, _, files in os.walk(os.path.join(repo, pkg)):
            if os.path.basename(d) == "__pycache__":
                for f in files:
                    if f.endswith(".pyc"):
                        os.remove(os.path.join(d, f))


def _settle(cache: str, timeout: float = 300.0) -> None:
    """Wait until no warm-start helper writes into ``cache`` (its stamp appears, or nothing changes)."""
    numba_dir = os.path.join(cache, "numba")
    t0, last = time.monotonic(), None
    while time.monotonic() - t0 < timeout:
        if os.path.isdir(numba_dir) and any(n.startswith("vit-intsim-warm-") for n in os.listdir(numba_dir)):
            return
        state = sorted((os.path.join(d, f), os.path.getmtime(os.path.join(d, f)))
                       for d, _, fs in os.walk(numba_dir) for f in fs) if os.path.isdir(numba_dir) else []
        if state == last:
            return
        last = state
        time.sleep(5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", action="append", default=None,
                   help="checkout to run (default: this one); give it twice, e.g. an older commit and this "
                        "one, to interleave their trials so a changing machine load biases neither")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS / NUMBA_NUM_THREADS of the job (default: theirs); 1 keeps the CPU time "
                        "meaningful on a loaded machine, where idle-spinning pool threads inflate it")
    p.add_argument("args", nargs="*", help="extra simulate arguments (default: none, the default job)")
    args = p.parse_args(argv)
    repos = [os.path.abspath(r) for r in (args.repo or [os.path.dirname(HERE)])]
    print(f"CPU: {cpu_description()}; load average {os.getloadavg()[0]:.2f} at start (shared machine)")
    print(f"python -m simulator.cli --no-progress {' '.join(args.args)}"
          + (f"  (OMP/NUMBA threads {args.threads})" if args.threads else ""))
    times = {r: {"cold": [], "warm": []} for r in repos}
    for i in range(args.trials):
        for repo in repos:
            cache = tempfile.mkdtemp(prefix="vit-intsim-cold-")
            try:
                _drop_project_bytecode(repo)
                for kind in ("cold", "warm"):
                    w, line, cpu = trial(repo, cache, args.args, args.threads)
                    times[repo][kind].append(w)
                    print(f"  {repo}  {kind} {i + 1}: {w:6.1f} s whole process, {cpu:5.1f} s CPU   [{line}]",
                          flush=True)
                    if kind == "cold":
                        _settle(cache)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    for repo in repos:
        c, w = times[repo]["cold"], times[repo]["warm"]
        print(f"{repo}: cold median {statistics.median(c):.1f} s (min {min(c):.1f}); "
              f"warm median {statistics.median(w):.1f} s (min {min(w):.1f})")
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
