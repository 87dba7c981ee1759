"""One-step transition data: trajectory split, pairing, snapshot selection, combined RMS."""

from pathlib import Path

import pytest
import torch

from symaudit import FieldLayout
from symaudit.data.stats import RunningRMS
from symaudit.data.store import DatasetError, write_dataset
from symaudit.data.transitions import load_transitions, parse_snapshots


def write_smooth_dataset(
    path: Path, *, n: int = 8, t: int = 6, h: int = 16, seed: int = 0, speed: int = 1
) -> torch.Tensor:
    """Smooth random periodic fields advected by ``speed`` cells in x per snapshot (a
    translation-equivariant, learnable dynamic); density and energy kept positive."""
    gen = torch.Generator().manual_seed(seed)
    spec = torch.fft.rfft2(torch.randn(n, 4, h, h, generator=gen))
    spec[..., 4:-3, :] = 0
    spec[..., 4:] = 0
    base = torch.fft.irfft2(spec, s=(h, h))
    base = base / base.std() * 0.5
    base[:, 0] += 2.0
    base[:, 3] += 3.0
    fields = torch.stack([torch.roll(base, speed * k, dims=-1) for k in range(t)], dim=1)
    write_dataset(path, fields, torch.arange(t) * 0.05, FieldLayout.euler(), {"ic_kind": "test"})
    return fields


def test_split_is_by_trajectory_seeded_and_complete(tmp_path):
    fields = write_smooth_dataset(tmp_path / "a.h5", n=10)
    a = load_transitions(tmp_path / "a.h5", val_fraction=0.3, seed=1)
    b = load_transitions(tmp_path / "a.h5", val_fraction=0.3, seed=1)
    c = load_transitions(tmp_path / "a.h5", val_fraction=0.3, seed=2)
    tr, va = a.split[str(tmp_path / "a.h5")]
    assert len(va) == 3 and sorted(tr + va) == list(range(10))
    assert a.split == b.split and a.split != c.split
    torch.testing.assert_close(a.train, fields[tr], rtol=0, atol=0)
    torch.testing.assert_close(a.val, fields[va], rtol=0, atol=0)


def test_pairs_are_consecutive_snapshots_of_one_trajectory(tmp_path):
    fields = write_smooth_dataset(tmp_path / "a.h5", n=4, t=5)
    data = load_transitions(tmp_path / "a.h5", val_fraction=0.0, snapshots="1:5")
    assert data.num_transitions() == 4 * 3 and data.num_transitions(unroll=2) == 4 * 2
    x, y = data.pairs(torch.tensor([0, 5, 11]))
    assert torch.equal(x[1], fields[1, 1 + 2]) and torch.equal(y[1, 0], fields[1, 1 + 3])
    assert torch.equal(x[2], fields[3, 3]) and torch.equal(y[2, 0], fields[3, 4])
    x, y = data.pairs(torch.tensor([2]), unroll=2)  # trajectory 1, first selected snapshot
    assert torch.equal(x[0], fields[1, 1]) and torch.equal(y[0], fields[1, 2:4])
    torch.testing.assert_close(data.times, torch.arange(1, 5, dtype=torch.float64) * 0.05)


def test_several_files_combine_rms_over_their_union(tmp_path):
    f1 = write_smooth_dataset(tmp_path / "a.h5", n=3, seed=1)
    f2 = write_smooth_dataset(tmp_path / "b.h5", n=5, seed=2) * 1.0
    data = load_transitions(tmp_path, val_fraction=0.2, seed=0)
    acc = RunningRMS(FieldLayout.euler())
    acc.update(f1)
    acc.update(f2)
    torch.testing.assert_close(data.channel_rms, acc.compute(), rtol=1e-6, atol=0)
    assert data.channel_rms[1] == data.channel_rms[2]  # one scale per vector
    assert data.train.shape[0] + data.val.shape[0] == 8
    assert all(len(va) >= 1 for _, va in data.split.values())  # every family validated


def test_mismatched_or_bad_inputs_are_rejected(tmp_path):
    write_smooth_dataset(tmp_path / "a.h5", h=16)
    write_smooth_dataset(tmp_path / "b.h5", h=32)
    with pytest.raises(DatasetError, match="resolution"):
        load_transitions([tmp_path / "a.h5", tmp_path / "b.h5"])
    with pytest.raises(DatasetError, match="no such dataset file"):
        load_transitions(tmp_path / "missing.h5")
    with pytest.raises(DatasetError, match="<2 snapshots"):
        load_transitions(tmp_path / "a.h5", snapshots=slice(0, 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no \\*.h5"):
        load_transitions(tmp_path / "empty")
    assert parse_snapshots("16") == slice(0, 16) and parse_snapshots("2:10:2") == slice(2, 10, 2)
    assert parse_snapshots("all") is None
    with pytest.raises(ValueError, match="snapshot selection"):
        parse_snapshots("first16")
