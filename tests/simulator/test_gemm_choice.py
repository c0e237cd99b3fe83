"""``--backend auto``: shape classes, the measurement, the per-machine cache (simulator/kernels/gemm_choice.py).

Time is never real here: candidates advance a fake clock by scripted amounts,
so the tests assert which backend the *timer* says is fastest.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from simulator.kernels import gemm, gemm_choice
from simulator.kernels.gemm_choice import BackendChooser, machine_key, shape_class

FACTS = {"cpu": "Test CPU", "flags": ["avx2"], "arch": "x86_64", "numba_threads": 1}


class FakeClock:
    """A timer that only moves when a candidate says how long it took."""

    def __init__(self):
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def candidates(self, cost: dict[str, float], result=None) -> dict:
        """``{name: (warm_up, run)}`` whose run takes ``cost[name]`` fake seconds and returns ``result``."""
        def run(name):
            def f():
                self.calls.append(name)
                self.now += cost[name]
                return result if result is not None else name
            return f
        return {n: (lambda: None, run(n)) for n in cost}


@pytest.fixture
def warned():
    """Warnings of gemm_choice's logger, whatever handlers the CLI's logging set-up left on its parents."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda r: records.append(r.getMessage())
    logger = logging.getLogger("simulator.kernels.gemm_choice")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _chooser(path, clock, facts=FACTS, **kw) -> BackendChooser:
    return BackendChooser(path, lambda: dict(facts), timer=clock, **kw)


# --- shape classes ----------------------------------------------------------------------------
def test_shape_class_rounds_to_nearest_power_of_two():
    cls = shape_class((48, 577, 64), (48, 64, 577), np.int8, np.int8, 128 * 128)
    assert cls == "P64 M512 K64 N512 int8@int8 p15"
    assert shape_class((1, 3152, 384), (1, 384, 1152), np.int8, np.int8, 16384) == \
        "P1 M4096 K512 N1024 int8@int8 p15"                    # 384 = 2**8.58 -> 512
    assert shape_class((1, 5, 3), (1, 3, 2), np.uint8, np.int8, 255 * 8) != \
        shape_class((1, 5, 3), (1, 3, 2), np.uint8, np.int8, 255 * 128)   # the chunking bound counts


def test_shared_weight_is_folded_into_rows():
    """``[B, T, K] @ W[K, N]`` is one [1, B*T, K] GEMM: its class has P1."""
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (4, 33, 16)).astype(np.int8)
    w = rng.integers(-128, 128, (16, 8)).astype(np.int8)
    rec: dict = {}
    got = gemm.int_matmul(a, w, 128, 128, "numba", record=rec)
    assert list(rec) == [shape_class((1, 132, 16), (1, 16, 8), np.int8, np.int8, 128 * 128)]
    assert np.array_equal(got, a.astype(np.int64) @ w)


# --- picking by the timer ---------------------------------------------------------------------
@pytest.mark.parametrize("fastest", ["numba", "int_mm", "blas_f32", "blas_f64"])
def test_picks_what_the_timer_says_is_fastest(tmp_path, fastest):
    clock = FakeClock()
    cost = {n: 1.0 for n in gemm.EXACT_BACKENDS}
    cost[fastest] = 0.25
    ch = _chooser(tmp_path / "c.json", clock)
    name, out = ch.pick("P1 M8 K8 N8 int8@int8 p15", clock.candidates(cost), macs=512)
    assert name == fastest and out == "numba"          # the first run's result is the GEMM's result
    assert ch.source == {"P1 M8 K8 N8 int8@int8 p15": "measured"}
    rec = ch.report({"P1 M8 K8 N8 int8@int8 p15": name})["P1 M8 K8 N8 int8@int8 p15"]
    assert rec["gops"][fastest] == pytest.approx(2 * 512 / 0.25 / 1e9, rel=1e-3)


def test_second_timing_only_for_contenders():
    """Backends within 2x of the fastest are timed again (minimum kept); the others are not."""
    clock = FakeClock()
    ch = _chooser(None, clock)
    name, _ = ch.pick("c", clock.candidates({"numba": 1.0, "int_mm": 1.5, "blas_f32": 5.0}), macs=1)
    assert name == "numba"
    assert sorted(clock.calls) == sorted(["numba", "int_mm", "blas_f32", "numba", "int_mm"])


def test_one_candidate_is_not_timed():
    clock = FakeClock()
    ch = _chooser(None, clock)
    assert ch.pick("c", clock.candidates({"numba": 3.0}), macs=1) == ("numba", "numba")
    assert clock.calls == ["numba"] and ch.report({"c": "numba"})["c"]["source"] == "only"


def test_int_matmul_auto_runs_the_chosen_backend():
    """With a chooser whose clock says blas_f64 is fastest, auto records blas_f64; the product is exact."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 3, 40, 21)).astype(np.uint8)
    b = rng.integers(-128, 128, (2, 3, 21, 12)).astype(np.int8)
    clock = FakeClock()
    cost = {"numba": 0.3, "int_mm": 0.2, "blas_f32": 0.4, "blas_f64": 0.1}

    class Scripted(BackendChooser):
        def pick(self, cls, candidates, macs):
            assert set(candidates) == set(cost)          # every exact backend applies to 8-bit codes
            timed = {n: (w, (lambda r=r, n=n: (clock.__setattr__("now", clock.now + cost[n]), r())[1]))
                     for n, (w, r) in candidates.items()}
            return super().pick(cls, timed, macs)

    rec: dict = {}
    got = gemm.int_matmul(a, b, 255, 128, "auto", record=rec, chooser=Scripted(None, lambda: FACTS, timer=clock))
    assert list(rec.values()) == ["blas_f64"]
    assert got.dtype == np.int32 and np.array_equal(got, a.astype(np.int64) @ b)


# --- the cache file -----------------------------------------------------------------------------
def test_cache_round_trips_and_is_per_machine(tmp_path):
    path = tmp_path / "vit-intsim" / "gemm-backends.json"
    clock = FakeClock()
    first = _chooser(path, clock)
    first.pick("k", clock.candidates({"numba": 2.0, "blas_f32": 1.0}), macs=10)
    data = json.loads(path.read_text())
    assert data["format"] == gemm_choice.FORMAT
    assert data["machines"][machine_key(FACTS)]["classes"]["k"]["backend"] == "blas_f32"

    clock2 = FakeClock()
    again = _chooser(path, clock2)                         # a new process on the same machine
    assert again.pick("k", clock2.candidates({"numba": 0.1, "blas_f32": 9.0}), macs=10)[0] == "blas_f32"
    assert clock2.calls == ["blas_f32"] and again.source["k"] == "cached"

    other = dict(FACTS, numba_threads=2)                   # another thread count is another machine
    clock3 = FakeClock()
    third = _chooser(path, clock3, facts=other)
    assert third.pick("k", clock3.candidates({"numba": 0.1, "blas_f32": 9.0}), macs=10)[0] == "numba"
    machines = json.loads(path.read_text())["machines"]
    assert {machine_key(FACTS), machine_key(other)} == set(machines)    # both kept, merged on write


@pytest.mark.parametrize("content", [b"\x00\xffnot json", b'{"format": 1}', b'{"format": 99, "machines": {}}',
                                     b'{"format": 1, "machines": {"k": {"classes": {"c": {"backend": 3}}}}}', b"[]"])
def test_corrupt_cache_is_ignored_and_rewritten(tmp_path, content, warned):
    path = tmp_path / "gemm-backends.json"
    path.write_bytes(content)
    clock = FakeClock()
    ch = _chooser(path, clock)
    assert len(warned) == 1 and "ignoring the GEMM backend cache" in warned[0]
    assert ch.pick("c", clock.candidates({"numba": 1.0, "int_mm": 0.5}), macs=1)[0] == "int_mm"
    data = json.loads(path.read_text())                    # replaced by a valid cache
    assert data["machines"][machine_key(FACTS)]["classes"]["c"]["backend"] == "int_mm"


def test_unwritable_cache_keeps_choices_in_memory(tmp_path, warned):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = blocker / "vit-intsim" / "gemm-backends.json"   # a parent that is a file: cannot be created
    clock = FakeClock()
    ch = _chooser(path, clock)
    assert ch.pick("c", clock.candidates({"numba": 1.0, "int_mm": 0.5}), macs=1)[0] == "int_mm"
    assert ch.pick("d", clock.candidates({"numba": 0.5, "int_mm": 1.0}), macs=1)[0] == "numba"
    assert len(warned) == 1 and "cannot write the GEMM backend cache" in warned[0]
    n = len(clock.calls)
    assert ch.pick("c", clock.candidates({"numba": 0.1, "int_mm": 5.0}), macs=1)[0] == "int_mm"
    assert len(clock.calls) == n + 1                       # remembered in memory: not measured again


def test_remeasure_env_ignores_the_cache(tmp_path, monkeypatch):
    path = tmp_path / "gemm-backends.json"
    clock = FakeClock()
    _chooser(path, clock).pick("c", clock.candidates({"numba": 1.0, "int_mm": 0.5}), macs=1)
    monkeypatch.setenv(gemm_choice.REMEASURE_ENV, "1")
    clock2 = FakeClock()
    ch = _chooser(path, clock2)
    assert ch.pick("c", clock2.candidates({"numba": 0.2, "int_mm": 0.5}), macs=1)[0] == "numba"
    assert ch.source["c"] == "measured"
    assert json.loads(path.read_text())["machines"][machine_key(FACTS)]["classes"]["c"]["backend"] == "numba"


def test_cache_path_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert gemm_choice.cache_path() == tmp_path / "vit-intsim" / "gemm-backends.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert gemm_choice.cache_path().parts[-3:] == (".cache", "vit-intsim", "gemm-backends.json")


def test_machine_facts_name_the_cpu_and_versions():
    facts = gemm_choice.machine_facts(gemm.torch_facts())
    assert facts["cpu"] and facts["numba"] and facts["torch"] and facts["numba_threads"] >= 1
    assert set(facts["flags"]) <= set(gemm_choice.SPEED_FLAGS)
    assert machine_key(facts) == machine_key(dict(reversed(list(facts.items()))))   # order-free
