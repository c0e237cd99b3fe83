"""Hypothesis profiles and thread settings shared by the whole test suite.

``ci`` (default): derandomized, no deadline (numba compiles on first use),
modest example counts, failures print a reproduction blob.
``dev``: more, random examples; select with ``HYPOTHESIS_PROFILE=dev``.
"""

from __future__ import annotations

import os
import sys
import tempfile

# The GEMM backend choices of ``--backend auto`` are cached per machine in the user's cache dir
# (simulator/kernels/gemm_choice.py); the tests use a fresh one of their own.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="vit-intsim-test-cache-")
os.environ.pop("VIT_INTSIM_GEMM_REMEASURE", None)

import numba
import pytest
import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # `import oracles, strategies`

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=50, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=300, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# One thread each for torch and numba by default: on a shared 2-core machine
# every parallel region waits for a descheduled sibling thread, and the tiny
# kernels of these tests ran 100-250x slower with 2 threads (measured). The
# parallel (prange) paths are still exercised: tests that check them take
# the `parallel_numba` fixture.
torch.set_num_threads(1)
numba.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread_each():
    """`simulate` sizes both pools for its run (``--threads``, default all cores); back to 1 after a test."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    if numba.get_num_threads() != 1:
        numba.set_num_threads(1)


@pytest.fixture
def parallel_numba():
    """Run the test with numba's parallel kernels on (up to) 2 threads."""
    old = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    yield numba.get_num_threads()
    numba.set_num_threads(old)


@pytest.fixture(scope="session")
def digits():
    """The bundled model, its digits calibration split and 64 test images: the graph-vs-legacy
    identity tests of every recipe (tests/reference/test_graph_*.py) share one load."""
    import reference

    model = reference.load_model()
    calib, _ = reference.load_dataset("digits", model, "calib")
    test, _ = reference.load_dataset("digits", model, "test", limit=64)
    return model, calib, test
