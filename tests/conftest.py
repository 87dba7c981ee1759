"""Shared test settings: single-threaded, denormal-free torch on CPU."""

import pytest
import torch

# The test grids are tiny: intra-op threads only add synchronisation, and on a 2-core machine
# with any other load a second thread made solver tests 10-40x slower (docs/data.md).
torch.set_num_threads(1)
# Denormals make float32 finite-volume code >10x slower on CPU (NOTES.md).
torch.set_flush_denormal(True)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
