"""Shared test settings: deterministic, single-threaded-friendly torch on CPU."""

import os

import pytest
import torch

# Two-core machines: keep torch from oversubscribing when pytest runs in parallel jobs.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# Denormals make float32 finite-volume code >10x slower on CPU (see NOTES.md).
torch.set_flush_denormal(True)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
