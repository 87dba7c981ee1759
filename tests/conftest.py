"""Shared test settings: single-threaded, denormal-free torch on CPU.

Both can be changed to check that no tolerance depends on a machine's kernels or summation
order: ``SYMAUDIT_TEST_THREADS=2`` and ``SYMAUDIT_TEST_FLUSH_DENORMAL=0`` (docs/solver.md).
"""

import os

import pytest
import torch

# The test grids are tiny: intra-op threads only add synchronisation, and on a 2-core machine
# with any other load a second thread made solver tests 10-40x slower (docs/data.md).
torch.set_num_threads(int(os.environ.get("SYMAUDIT_TEST_THREADS", "1")))
# Denormals make float32 finite-volume code >10x slower on CPU (NOTES.md).
torch.set_flush_denormal(os.environ.get("SYMAUDIT_TEST_FLUSH_DENORMAL", "1") != "0")


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def micro_study(tmp_path_factory):
    """One `reproduce("micro")` run shared read-only by the tests that only inspect it."""
    from symaudit.pipeline import reproduce

    out = tmp_path_factory.mktemp("micro-shared")
    reproduce("micro", out, progress=False)
    return out
