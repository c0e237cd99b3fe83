"""What an executor's ``.run(images)`` returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from simulator.trace import Trace

__all__ = ["RunResult", "CodeStore", "CodeDigests", "first_mismatch", "bit_exact_images"]


class CodeStore(Mapping):
    """The codes of every tensor, batch-first, held as the executor computed them (int8/int16/int32
    where the tensor's bits allow) and widened to int64 on first access by name.

    Why: a 197-token ViT has ~18M codes per image; widening every one to int64 while the executors
    ran (then concatenating) allocated ~150 MB per DeiT-S image per executor, and on a 2-core VM that
    allocation (page faults, 76% system time) took 30x the walk itself. `bit_exact_images` and
    `first_mismatch` compare the narrow arrays through `raw` (numpy compares mixed integer dtypes
    exactly), so a bit-exactness check never widens; ``codes[name]`` keeps returning int64 for
    every other consumer. ``parts``: tensor -> the per-batch arrays (concatenated once, on first use).
    """

    def __init__(self, parts: dict[str, list[np.ndarray]] | None = None):
        self._parts = {k: list(v) for k, v in (parts or {}).items()}
        self._wide: dict[str, np.ndarray] = {}

    def raw(self, name: str) -> np.ndarray:
        """The codes of ``name`` in the executor's own integer dtype."""
        parts = self._parts[name]
        if len(parts) != 1:
            parts[:] = [np.concatenate(parts)]
        return parts[0]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._wide:
            self._wide[name] = self.raw(name).astype(np.int64, copy=False)
        return self._wide[name]

    def __iter__(self):
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)


class CodeDigests:
    """Per-image digests of every tensor's codes (`simulator.kernels.code_digest.row_digests`), what
    ``run(images, keep_codes="digest")`` returns instead of the codes: enough for `bit_exact_images`
    at a few bytes per tensor and image, where the codes themselves are ~18M per DeiT-S image.

    ``add(name, codes)`` digests one batch of ``name`` as the executor makes it (no copy kept);
    ``digests(name)``: uint64 per image; ``shapes``: tensor -> the per-image shape."""

    def __init__(self):
        self._parts: dict[str, list[np.ndarray]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def add(self, name: str, codes) -> None:
        from simulator.kernels.code_digest import row_digests
        codes = np.asarray(codes)
        self.shapes[name] = tuple(codes.shape[1:])
        self._parts.setdefault(name, []).append(row_digests(codes))

    def digests(self, name: str) -> np.ndarray:
        parts = self._parts[name]
        if len(parts) != 1:
            parts[:] = [np.concatenate(parts)]
        return parts[0]

    def names(self) -> list[str]:
        return list(self._parts)

    def take(self, rows: np.ndarray) -> "CodeDigests":
        """The digests of the images at ``rows`` only."""
        out = CodeDigests()
        out.shapes = dict(self.shapes)
        out._parts = {k: [self.digests(k)[rows]] for k in self._parts}
        return out


def _raw(codes: Mapping, name: str) -> np.ndarray:
    return codes.raw(name) if isinstance(codes, CodeStore) else np.asarray(codes[name])


@dataclass
class RunResult:
    """Logits (dequantized logit codes), the codes of every tensor boundary
    (batch-first int arrays, empty when ``keep_codes=False``) and the trace."""

    logits: np.ndarray
    logit_codes: np.ndarray
    trace: Trace
    codes: Mapping[str, np.ndarray] = field(default_factory=dict)     # a `CodeStore` from the executors
    digests: CodeDigests | None = None       # ``keep_codes="digest"``: per-image digests instead of codes

    @property
    def predictions(self) -> np.ndarray:
        return np.argmax(self.logit_codes, axis=1)


def _bit_exact_digests(a: CodeDigests, b: CodeDigests) -> np.ndarray:
    if set(a.names()) != set(b.names()):
        raise ValueError(f"boundaries differ: {sorted(set(a.names()) ^ set(b.names()))}")
    names = a.names()
    n = len(a.digests(names[0])) if names else 0
    ok = np.ones(n, dtype=bool)
    for k in names:
        if a.shapes[k] != b.shapes[k]:
            return np.zeros(n, dtype=bool)
        ok &= a.digests(k) == b.digests(k)
    return ok


def bit_exact_images(a, b) -> np.ndarray:
    """Bool per image: every boundary's codes equal in ``a`` and ``b`` (two code mappings, or two
    `CodeDigests`: equal digests, see `simulator.kernels.code_digest` for what that proves)."""
    if isinstance(a, CodeDigests) or isinstance(b, CodeDigests):
        if not (isinstance(a, CodeDigests) and isinstance(b, CodeDigests)):
            raise TypeError("bit_exact_images: compare codes with codes, or digests with digests")
        return _bit_exact_digests(a, b)
    if set(a) != set(b):
        raise ValueError(f"boundaries differ: {sorted(set(a) ^ set(b))}")
    n = len(_raw(a, next(iter(a))))
    ok = np.ones(n, dtype=bool)
    for k in a:
        x, y = _raw(a, k), _raw(b, k)
        if x.shape != y.shape:
            return np.zeros(n, dtype=bool)
        ok &= (x.reshape(n, -1) == y.reshape(n, -1)).all(axis=1)
    return ok


def first_mismatch(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str | None:
    """Describe the first differing boundary/index, or None when all equal."""
    for k in a:
        x, y = _raw(a, k), _raw(b, k)
        if x.shape != y.shape:
            return f"{k}: shape {x.shape} vs {y.shape}"
        diff = np.argwhere(x != y)
        if len(diff):
            idx = tuple(int(i) for i in diff[0])
            return f"{k}{list(idx)}: {x[idx]} vs {y[idx]}"
    return None
