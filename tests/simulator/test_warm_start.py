"""Cold start: the kernel cache directory and the warm-start helper process (simulator/kernel_cache.py,
simulator/warm_start.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulator import warm_start
from simulator.kernel_cache import cache_dir, stamp_path, user_cache_dir

ROOT = Path(__file__).resolve().parents[2]

# The default job's simulator on a few digits, then how many kernel specialisations it compiled
# (cache misses) and loaded (cache hits), and where the cache is.
_RUN_DEFAULT_SIMULATOR = """
import numba, reference
from numba.core.registry import CPUDispatcher
from simulator.int_ops import GraphIntegerExecutor
import sys
model = reference.load_model()
calib, _ = reference.load_dataset("digits", model, "calib")
x, _ = reference.load_dataset("digits", model, "test", limit=4)
from reference.fakequant_ops import GraphFakeQuantExecutor
qg = reference.quantize(model, calib, "configs/recipes/static_w8a8.yaml")
GraphIntegerExecutor(qg).run(x, keep_codes="digest")          # as the main job's bit-exact check runs them
GraphFakeQuantExecutor(qg).run(x, keep_codes="digest")
from simulator.jit import RowKernel
miss = hit = 0
for name, mod in list(sys.modules.items()):
    if name.startswith("simulator"):
        for obj in vars(mod).values():
            if isinstance(obj, RowKernel) and obj.py_func.__module__ == name:
                disp = [obj.serial, obj.parallel]
            elif isinstance(obj, CPUDispatcher) and obj.__module__ == name:
                disp = [obj]
            else:
                continue
            for d in disp:
                miss += sum(d.stats.cache_misses.values()); hit += sum(d.stats.cache_hits.values())
print(miss, hit, numba.config.CACHE_DIR)
"""


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "VIT_INTSIM_WARM_START")}
    env.update(XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=str(ROOT), NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return env


@pytest.mark.slow
def test_default_job_compiles_nothing_after_a_warm_start(tmp_path):
    env = _env(tmp_path)
    want = tmp_path / "vit-intsim" / "numba"
    done = subprocess.run([sys.executable, "-m", "simulator.warm_start"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert list(want.rglob("*.nbi")) and list(want.glob("vit-intsim-warm-*"))   # the user cache dir, stamped
    run = subprocess.run([sys.executable, "-c", _RUN_DEFAULT_SIMULATOR], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    miss, hit, where = run.stdout.split()
    assert where == str(want)
    assert int(miss) == 0 and int(hit) >= 8        # every specialisation the job ran came from the warm start


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == user_cache_dir() == tmp_path / "xdg" / "vit-intsim" / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" and stamp_path().parent == tmp_path / "mine"


def test_warm_start_is_skipped_when_warm_or_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(warm_start, "_started", [])
    monkeypatch.setenv("VIT_INTSIM_WARM_START", "0")
    assert warm_start.start() is None
    monkeypatch.delenv("VIT_INTSIM_WARM_START")
    stamp_path().write_text("warm\n")
    assert warm_start.start() is None and warm_start._started == []


def test_warm_calls_follow_the_executor_order():
    names = [n for n, _ in warm_start.warm_calls()]
    assert names[0] == "quantize_patches" and names[-2] == "int_gelu" and len(set(names)) == len(names)
    assert names[-1] == "row_digests float32"          # the fake-quant executor's, after the simulator


class _Helper:
    """A stand-in for the helper process: running until ``exit_code`` is set."""

    def __init__(self):
        self.exit_code = None

    def poll(self):
        return self.exit_code


def test_kernels_run_serial_while_the_helper_compiles(monkeypatch):
    from simulator import jit

    helper = _Helper()
    monkeypatch.setattr(warm_start, "_started", [helper])
    monkeypatch.setattr(warm_start, "_launched", [time.monotonic() - warm_start.SERIAL_WINDOW_S - 1])
    monkeypatch.setitem(jit._variant, "parallel_ok", False)
    monkeypatch.setitem(jit._variant, "pending", warm_start.compiling)     # as `start` registers it
    assert not warm_start.compiling()                  # running, but launched longer ago than the window
    monkeypatch.setattr(warm_start, "_launched", [time.monotonic()])
    assert warm_start.compiling() and not jit.use_parallel()
    with jit.kernel_variant("parallel"):
        assert jit.use_parallel()
    helper.exit_code = 0
    assert not warm_start.compiling() and jit.use_parallel()
    helper.exit_code = None                     # once switched, it stays parallel
    assert jit.use_parallel()
    with pytest.raises(ValueError, match="serial"):
        with jit.kernel_variant("fast"):
            pass


def test_start_makes_the_job_run_serial_until_the_helper_is_done(tmp_path, monkeypatch):
    from simulator import jit

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("VIT_INTSIM_WARM_START", raising=False)
    monkeypatch.setattr(warm_start, "_started", [])
    monkeypatch.setattr(warm_start, "_launched", [])
    monkeypatch.setitem(jit._variant, "pending", None)
    monkeypatch.setitem(jit._variant, "parallel_ok", True)
    helper = _Helper()
    monkeypatch.setattr(warm_start.subprocess, "Popen", lambda *a, **k: helper)
    assert warm_start.start() is helper
    assert jit._variant["pending"] is warm_start.compiling and not jit.use_parallel()
    helper.exit_code = 0
    assert jit.use_parallel()
