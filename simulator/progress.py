"""Progress that tells the truth: a bar with an ETA on a terminal, log lines otherwise.

Every phase that can take more than a couple of seconds (library imports,
calibration, a recipe's search, each executor, each sweep point) reports
through this module:

* stderr is a terminal: a tqdm bar (count, rate, elapsed, ETA), redrawn every
  second by a heartbeat thread so the elapsed time moves even while one long
  step (a first batch that JIT-compiles) runs;
* stderr is not a terminal (CI logs, ``| tee``): an INFO log line when the
  phase starts, then one every `INTERVAL_S` seconds with count, percent,
  elapsed time and ETA -- written by the heartbeat thread too, so a long
  step is never silent -- and one when it ends (if it took over
  `QUIET_BELOW_S`).

Log lines go through `logging` (logger ``simulator.progress``), so the CLI's
``--quiet`` / ``--verbose`` decide what is shown; ``--no-progress``
(`configure(enabled=False)`) silences every bar and progress line, whichever
module draws it. Torch-free, numba-free.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator

__all__ = ["Progress", "track", "phase", "configure", "enabled", "format_seconds", "INTERVAL_S"]

log = logging.getLogger("simulator.progress")

INTERVAL_S = 10.0      # seconds between two log lines when stderr is not a terminal
QUIET_BELOW_S = 2.0    # phases shorter than this end without a "done" line
_settings = {"enabled": True}


def configure(enabled: bool = True) -> None:
    """Turn every bar and progress line on or off (``--no-progress``)."""
    _settings["enabled"] = bool(enabled)


def enabled() -> bool:
    return _settings["enabled"]


def format_seconds(s: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class _Heartbeat:
    """A daemon thread calling ``beat()`` every ``period`` seconds until stopped."""

    def __init__(self, beat, period: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(beat, period), daemon=True)
        self._thread.start()

    def _run(self, beat, period: float) -> None:
        while not self._stop.wait(period):
            beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _period() -> float:
    return max(INTERVAL_S, 1.0)


class Progress:
    """A counter of ``total`` units: tqdm on a terminal, periodic log lines otherwise."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self._t0 = self._last = time.monotonic()
        self._bar = self._beat = None
        if not enabled():
            return
        self._lock = threading.Lock()
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, file=sys.stderr)
            self._beat = _Heartbeat(self._refresh, 1.0)
        else:
            log.info("%s: %s", desc, self._counts())
            self._beat = _Heartbeat(self._heartbeat_line, _period())

    def _refresh(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.refresh()

    def _heartbeat_line(self) -> None:
        with self._lock:
            if time.monotonic() - self._last >= INTERVAL_S:
                self._last = time.monotonic()
                log.info("%s", self.line())

    def _counts(self) -> str:
        if not self.total:
            return f"{self.n} {self.unit}"
        return f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"

    def line(self) -> str:
        """The text of a log line: counts, elapsed and (when known) the ETA."""
        elapsed = time.monotonic() - self._t0
        text = f"{self.desc}: {self._counts()}, {format_seconds(elapsed)} elapsed"
        if self.total and 0 < self.n < self.total:
            text += f", ETA {format_seconds(elapsed / self.n * (self.total - self.n))}"
        return text

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        if self._beat is None:          # disabled
            self.n += n
            return
        with self._lock:
            self.n += n
            if self._bar is not None:
                if postfix:
                    self._bar.set_postfix_str(postfix, refresh=False)
                self._bar.update(n)
            elif time.monotonic() - self._last >= INTERVAL_S and not (self.total and self.n >= self.total):
                self._last = time.monotonic()
                log.info("%s%s", self.line(), f" (last: {postfix})" if postfix else "")

    def close(self) -> None:
        if self._beat is None:
            return
        self._beat.stop()
        self._beat = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif time.monotonic() - self._t0 >= QUIET_BELOW_S:
            log.info("%s: done, %s in %s", self.desc, self._counts(), format_seconds(time.monotonic() - self._t0))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable, desc: str, total: int | None = None, unit: str = "it") -> Iterator:
    """Iterate ``iterable`` while reporting progress (see `Progress`)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, desc, unit) as bar:
        for item in iterable:
            yield item
            bar.update()


@contextlib.contextmanager
def phase(desc: str):
    """A phase without a count (imports, a model build): a start line, and a done line if slow."""
    t0 = time.monotonic()
    if not enabled():
        yield
        return
    log.info("%s ...", desc)
    beat = _Heartbeat(lambda: log.info("%s: %s elapsed", desc, format_seconds(time.monotonic() - t0)), _period())
    try:
        yield
    finally:
        beat.stop()
    if time.monotonic() - t0 >= QUIET_BELOW_S:
        log.info("%s: done in %s", desc, format_seconds(time.monotonic() - t0))
