"""Streamed training data: the same split, batches and parameters as the in-memory path,
read on demand (memory bounded by the batch), with the next batch prefetched."""

from __future__ import annotations

import threading

import pytest
import torch

from symaudit.data.stream import StreamedTrajectories, prefetched
from symaudit.data.transitions import load_transitions, selected_nbytes
from symaudit.training import TrainConfig, train
from test_transitions import write_smooth_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    write_smooth_dataset(d / "a.h5", n=7, t=6, h=16, seed=0)
    write_smooth_dataset(d / "b.h5", n=5, t=6, h=16, seed=1)
    return d


def test_streamed_trajectories_equal_the_in_memory_ones(data_dir):
    mem = load_transitions(data_dir, snapshots="1:6:2", val_fraction=0.3, seed=3)
    st = load_transitions(data_dir, snapshots="1:6:2", val_fraction=0.3, seed=3, stream=True)
    assert isinstance(st.train, StreamedTrajectories) and isinstance(mem.train, torch.Tensor)
    assert st.split == mem.split and st.train.shape == mem.train.shape
    torch.testing.assert_close(st.channel_rms, mem.channel_rms, rtol=0, atol=0)
    assert torch.equal(st.train[:], mem.train) and torch.equal(st.val[:], mem.val)
    assert torch.equal(st.train[2:9:3], mem.train[2:9:3])  # across the file boundary
    g = torch.Generator().manual_seed(0)
    for unroll in (1, 2):
        idx = torch.randint(0, mem.num_transitions(unroll), (11,), generator=g)
        for a, b in zip(st.pairs(idx, unroll), mem.pairs(idx, unroll), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(IndexError, match="out of range"):
        st.train[torch.tensor([len(st.train)]), torch.tensor([0])]
    assert selected_nbytes(data_dir, "1:6:2") == (7 + 5) * 3 * 4 * 16 * 16 * 4


def test_streamed_training_gives_the_same_parameters(data_dir, tmp_path):
    base = dict(
        model="unet-tiny",
        data=[str(data_dir)],
        epochs=2,
        batch_size=4,
        lr=1e-2,
        val_fraction=0.25,
        seed=1,
        augment="d4+shift",
        balance=0.5,
    )
    mem = train(TrainConfig(**base, data_loading="memory"), tmp_path / "m", progress=False)
    st = train(TrainConfig(**base, data_loading="stream"), tmp_path / "s", progress=False)
    for p, q in zip(mem.model.parameters(), st.model.parameters(), strict=True):
        assert torch.equal(p, q)
    drop = {"seconds", "samples_per_second"}
    strip = lambda h: [{k: v for k, v in m.items() if k not in drop} for m in h]  # noqa: E731
    assert strip(mem.history) == strip(st.history)
    # a resume may switch the loader (it does not change the result)
    half = train(
        TrainConfig(**base, data_loading="memory"), tmp_path / "r", progress=False, stop_after=1
    )
    assert half.epochs_run == 1
    rest = train(TrainConfig(**base, data_loading="stream"), tmp_path / "r", progress=False)
    for p, q in zip(mem.model.parameters(), rest.model.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="data_loading"):
        TrainConfig(**base, data_loading="disk")


def test_prefetched_keeps_order_and_overlaps():
    seen = []
    started = threading.Event()

    def fn(i):
        seen.append(i)
        if i == 1:
            started.set()
        return i * i

    gen = prefetched(fn, range(5))
    assert next(gen) == 0
    assert started.wait(5)  # item 1 is computed while the caller holds item 0
    assert list(gen) == [1, 4, 9, 16]
    assert seen == [0, 1, 2, 3, 4]
    assert list(prefetched(fn, [])) == []
