"""``--backend auto``: the fastest exact GEMM backend per shape class, measured on this machine.

Which exact backend wins (`simulator.kernels.gemm`) depends on the CPU: oneDNN's
int8 GEMM (``int_mm``) is fast with AVX-512 VNNI or AMX and very slow without;
float32 BLAS is fast everywhere but needs K-chunks for wide products; the numba
kernel wins on small batched products such as attention. So ``auto`` times the
applicable backends once per **shape class** on the machine it runs on, keeps
the fastest, and caches the choice per **machine**.

**Shape class.** A GEMM ``[P, M, K] @ [P or 1, K, N]`` (P the batch of 2-D
products; a weight shared by the batch is folded into M) is classed by P, M,
K and N each rounded to the nearest power of two (``2**round(log2 n)``: 577
tokens -> 512, 3152 rows -> 4096), the two operand dtypes, and the bit length of
``a_max * b_max`` (which decides the float backends' K-chunking), written e.g.
``P64 M512 K64 N512 uint8@int8 p15``. Within a class the rates of the backends
scale alike, so one measurement serves the class.

**Measurement.** Each applicable backend first runs once on a slice of the
operands (numba's compile or cache load and torch's first-call set-up are not
timed), then once on the real operands, timed; backends within 2x of the
fastest are timed once more and the minimum kept. The first real run's result
is the GEMM's result (all backends are exact, so which one does not matter).
The timer is injectable (tests never depend on real time).

**Machine key.** CPU model name, the CPU flags that decide GEMM speed
(`SPEED_FLAGS`), architecture, and the versions and thread counts of numba and
torch: a change of any of them is a different machine. The key is the first
16 hex digits of the SHA-256 of those facts.

**Cache file.** ``$XDG_CACHE_HOME/vit-intsim/gemm-backends.json`` (default
``~/.cache/vit-intsim``), ``{"format": 1, "machines": {key: {"facts": ...,
"classes": {class: {"backend", "seconds", "gops"}}}}}``, rewritten atomically
(`simulator.atomic_files`) after each new measurement. A missing, unreadable
or corrupt file is ignored (and replaced on the next write); an unwritable
one leaves the choices in memory for this process, with one warning. Set
``VIT_INTSIM_GEMM_REMEASURE=1`` to measure every class again (the new
choices overwrite the cached ones).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

from simulator.errors import InputError

__all__ = ["shape_class", "machine_facts", "machine_key", "cache_path", "BackendChooser", "SPEED_FLAGS",
           "REMEASURE_ENV", "FORMAT"]

log = logging.getLogger(__name__)

FORMAT = 1
REMEASURE_ENV = "VIT_INTSIM_GEMM_REMEASURE"
CACHE_NAME = "gemm-backends.json"
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
               "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "sve2")
REPEAT_WITHIN = 2.0          # a backend within this factor of the fastest is timed a second time


def _pow2(n: int) -> int:
    return 1 << round(math.log2(n)) if n > 0 else 0


def shape_class(a_shape, b_shape, a_dtype, b_dtype, bound: int) -> str:
    """``P.. M.. K.. N.. <a dtype>@<b dtype> p<bits of a_max*b_max>`` for ``a [P, M, K] @ b [P|1, K, N]``."""
    p, m, k = a_shape
    n = b_shape[-1]
    return (f"P{_pow2(p)} M{_pow2(m)} K{_pow2(k)} N{_pow2(n)} "
            f"{np.dtype(a_dtype).name}@{np.dtype(b_dtype).name} p{int(bound).bit_length()}")


@functools.lru_cache(maxsize=1)
def _cpu() -> tuple[str, tuple[str, ...]]:
    """(model name, speed flags present) from /proc/cpuinfo, else from `platform`."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), tuple(f for f in SPEED_FLAGS if f in flags)


def machine_facts(extra: dict | None = None) -> dict:
    """What decides which backend is fastest here (module docstring); ``extra``: torch's facts."""
    model, flags = _cpu()
    return {"cpu": model, "flags": list(flags), "arch": platform.machine(), "numpy": np.__version__,
            "numba": numba.__version__, "numba_threads": numba.get_num_threads(), **(extra or {})}


def machine_key(facts: dict) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def cache_path() -> Path | None:
    """``$XDG_CACHE_HOME/vit-intsim/gemm-backends.json`` (``~/.cache`` by default); None without a home."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:
            return None
    return Path(base) / "vit-intsim" / CACHE_NAME


def _read(path: Path | None, warn: bool = True) -> dict:
    """The cache file's ``machines`` mapping; {} when missing, unreadable or malformed (with a warning)."""
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        machines = data["machines"]
        if data.get("format") != FORMAT or not isinstance(machines, dict):
            raise ValueError("format")
        for entry in machines.values():
            for rec in entry["classes"].values():
                if not isinstance(rec["backend"], str) or not isinstance(rec["gops"], dict):
                    raise ValueError("record")
        return machines
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if warn:
            log.warning("ignoring the GEMM backend cache %s (%s: not a format-%d cache); it is rewritten with "
                        "new measurements", path, type(e).__name__, FORMAT)
        return {}


class BackendChooser:
    """Picks, per shape class, the fastest of the candidate backends; remembers and caches it.

    ``facts``: a function returning the facts of this machine (`machine_facts`),
    called at each pick (thread counts can change); ``path``: the cache file or
    None; ``timer``: seconds (``time.perf_counter``); ``remeasure``: ignore the
    cached choices (default: the ``VIT_INTSIM_GEMM_REMEASURE`` variable).
    """

    def __init__(self, path: Path | None, facts: Callable[[], dict], timer: Callable[[], float] = time.perf_counter,
                 remeasure: bool | None = None):
        self.path, self.facts, self.timer = path, facts, timer
        self.remeasure = bool(os.environ.get(REMEASURE_ENV)) if remeasure is None else remeasure
        self.machines = {} if self.remeasure else _read(path)
        self.source: dict[str, str] = {}            # class -> "measured" / "cache" (this process)
        self._writable = path is not None

    @classmethod
    def for_this_machine(cls, extra_facts: Callable[[], dict]) -> "BackendChooser":
        """The chooser of the cache file in the user's cache dir; ``extra_facts()``: torch's facts."""
        return cls(cache_path(), lambda: machine_facts(extra_facts()))

    def _classes(self, facts: dict) -> dict:
        entry = self.machines.setdefault(machine_key(facts), {"facts": facts, "classes": {}})
        return entry["classes"]

    def pick(self, cls: str, candidates: dict, macs: int):
        """``candidates[name] = (warm_up, run)``; returns (name, result of a run). Measures on a miss."""
        classes = self._classes(self.facts())
        rec = classes.get(cls)
        if len(candidates) == 1:
            name = next(iter(candidates))
            return name, candidates[name][1]()
        if rec is not None and rec["backend"] in candidates:
            self.source.setdefault(cls, "cached")
            return rec["backend"], candidates[rec["backend"]][1]()
        if not self.source:
            log.info("measuring the exact GEMM backends on this machine (once per shape class; cached in %s)",
                     self.path or "memory only")
        seconds, out = self._measure(candidates)
        best = min(seconds, key=seconds.get)
        classes[cls] = {"backend": best, "seconds": seconds,
                        "gops": {n: float(f"{2 * macs / max(s, 1e-12) / 1e9:.4g}") for n, s in seconds.items()}}
        self.source[cls] = "measured"
        log.debug("GEMM %s: %s (%s)", cls, best, ", ".join(f"{n} {g} GOPS" for n, g in classes[cls]["gops"].items()))
        self._save()
        return best, out

    def _measure(self, candidates: dict) -> tuple[dict, object]:
        seconds, out = {}, None
        for name, (warm, run) in candidates.items():
            warm()
            t = self.timer()
            res = run()
            seconds[name] = self.timer() - t
            out = res if out is None else out
        fastest = min(seconds.values())
        for name, (_, run) in candidates.items():
            if seconds[name] <= REPEAT_WITHIN * fastest:
                t = self.timer()
                run()
                seconds[name] = min(seconds[name], self.timer() - t)
        return {n: float(f"{s:.4g}") for n, s in seconds.items()}, out

    def _save(self) -> None:
        """Merge this process's choices into the file and rewrite it atomically (warn once on failure)."""
        if not self._writable:
            return
        from simulator.atomic_files import ensure_dir, write_json

        merged = _read(self.path, warn=False)
        for key, entry in self.machines.items():
            merged.setdefault(key, {"facts": entry["facts"], "classes": {}})["classes"].update(entry["classes"])
        try:
            ensure_dir(self.path.parent)
            write_json(self.path, {"format": FORMAT, "machines": merged})
        except (InputError, OSError) as e:
            self._writable = False
            log.warning("cannot write the GEMM backend cache (%s); backends are measured again in the next run", e)

    def report(self, classes: dict) -> dict:
        """``{class: {"backend", "source", "gops"}}`` for the classes an ``auto`` run used (`int_matmul`'s
        record); source ``measured`` (this process), ``cached`` (the file) or ``only`` (one candidate)."""
        known = self._classes(self.facts())
        out = {}
        for cls, name in sorted(classes.items()):
            rec = known.get(cls)
            out[cls] = {"backend": name, "source": self.source.get(cls, "only"),
                        "gops": dict(rec["gops"]) if rec else {}}
        return out
