"""One-step (or k-step) transitions (x_t, x_{t+1}, …) from one or several dataset files.

Trajectories are split into training and validation sets per file (so every initial-condition
family is represented in both) by a permutation drawn from ``seed``; the split is therefore a
function of (files, seed, val_fraction) only. The selected snapshots are held in memory as
float32 `(n, T, C, H, W)` tensors (a 1000 × 16 × 4 × 128² set is 4 GB), or, with
``stream=True``, read from the files on demand by `symaudit.data.stream.StreamedTrajectories`
(same split, same values, memory bounded by the batch: the paper's 15,000 trajectories are
~83 GB).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from symaudit.data.store import DatasetError, open_dataset
from symaudit.fields import FieldLayout

__all__ = [
    "TransitionData",
    "expand_paths",
    "load_transitions",
    "parse_snapshots",
    "selected_nbytes",
]

Snapshots = str | int | slice | Sequence[int] | None


def parse_snapshots(spec: str | int | None) -> slice | None:
    """``None``/"all" → every snapshot; ``16`` → the first 16; ``"a:b[:s]"`` → that slice."""
    if spec is None or spec == "all":
        return None
    if isinstance(spec, int):
        return slice(0, spec)
    text = str(spec).strip()
    try:
        if ":" in text:
            parts = [int(p) if p else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            return slice(*parts)
        return slice(0, int(text))
    except ValueError:
        raise ValueError(
            f"snapshot selection {spec!r} must be 'all', a count N, or a slice 'start:stop[:step]'"
        ) from None


def expand_paths(data: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Dataset files from a file, a directory (its ``*.h5`` files, sorted) or a list of both."""
    items = [data] if isinstance(data, str | os.PathLike) else list(data)
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.h5"))
            if not found:
                raise DatasetError(f"{p}: directory holds no *.h5 dataset files")
            paths.extend(found)
        else:
            paths.append(p)
    if not paths:
        raise DatasetError("no dataset files given")
    return paths


@dataclass
class TransitionData:
    """Training and validation trajectories, `(n, T, C, H, W)` float32 each, plus what the loss
    and the checkpoint need: the layout, the snapshot times, the combined channel RMS, and
    which trajectories of which file went where (``split``: file → (train ids, val ids))."""

    train: torch.Tensor  # or a StreamedTrajectories (same shape, indexing and values)
    val: torch.Tensor
    layout: FieldLayout
    times: torch.Tensor
    channel_rms: torch.Tensor
    split: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)

    def num_transitions(self, unroll: int = 1) -> int:
        return self.train.shape[0] * max(0, self.train.shape[1] - unroll)

    def pairs(self, index: torch.Tensor, unroll: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Training samples ``index`` (flat over (trajectory, start time)) → inputs `(b, C, H, W)`
        and targets `(b, unroll, C, H, W)`."""
        per_traj = self.train.shape[1] - unroll
        traj, start = index // per_traj, index % per_traj
        steps = start.unsqueeze(1) + torch.arange(unroll + 1)
        seq = self.train[traj.unsqueeze(1), steps]  # (b, unroll + 1, C, H, W)
        return seq[:, 0], seq[:, 1:]


def selected_nbytes(
    data: str | os.PathLike | Sequence[str | os.PathLike], snapshots: Snapshots = None
) -> int:
    """Bytes that `load_transitions` would hold in memory (float32 fields, train + val)."""
    total = 0
    for path in expand_paths(data):
        with open_dataset(path) as ds:
            sel = parse_snapshots(snapshots) if isinstance(snapshots, str | int) else snapshots
            idx = list(range(ds.num_snapshots))
            t = len(idx[sel]) if isinstance(sel, slice) else len(idx) if sel is None else len(sel)
            h, w = ds.resolution
            total += ds.num_trajectories * t * ds.layout.num_channels * h * w * 4
    return total


def _split(n: int, val_fraction: float, seed: int, file_index: int) -> tuple[list, list]:
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + file_index)
    perm = torch.randperm(n, generator=gen).tolist()
    n_val = min(n - 1, math.ceil(val_fraction * n)) if val_fraction > 0 else 0
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def load_transitions(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    snapshots: Snapshots = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    stream: bool = False,
) -> TransitionData:
    """Load trajectories from dataset files and split them by trajectory with ``seed``.

    ``snapshots``: which snapshots to use (`parse_snapshots` syntax, a slice, or indices);
    transitions pair consecutive selected snapshots. ``stream``: do not read the fields now;
    ``train``/``val`` read them on demand (`symaudit.data.stream`).

    All files must share layout, resolution and (selected) snapshot times. The channel RMS is
    the element-count-weighted combination of the files' stored RMS values,
    rms_c = sqrt(Σ_f n_f rms_{f,c}² / Σ_f n_f), n_f = trajectories × snapshots of file f —
    exactly the RMS over the union of the files (vector components keep one shared value).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    paths = expand_paths(data)
    train, val, split = [], [], {}
    frame = None
    layout = times = None
    sumsq, count = None, 0
    for i, path in enumerate(paths):
        with open_dataset(path) as ds:
            sel = parse_snapshots(snapshots) if isinstance(snapshots, str | int) else snapshots
            idx = list(range(ds.num_snapshots))
            idx = idx[sel] if isinstance(sel, slice) else idx if sel is None else list(sel)
            if len(idx) < 2:
                raise DatasetError(f"{path}: snapshot selection {snapshots!r} leaves <2 snapshots")
            t = ds.times[torch.tensor(idx, dtype=torch.long)]
            if layout is None:
                layout, times, resolution = ds.layout, t, ds.resolution
            elif ds.layout != layout:
                raise DatasetError(f"{path}: layout {ds.layout} differs from {layout}")
            elif ds.resolution != resolution:
                raise DatasetError(f"{path}: resolution {ds.resolution} differs from {resolution}")
            elif t.shape != times.shape or not torch.allclose(t, times):
                raise DatasetError(f"{path}: snapshot times differ from those of {paths[0]}")
            tr, va = _split(ds.num_trajectories, val_fraction, seed, i)
            frame = (ds.layout.num_channels, *ds.resolution)
            if stream:
                train.append((path, tr))
                val.append((path, va))
            else:
                train.append(ds.read(tr, idx))
                val.append(ds.read(va, idx) if va else train[-1][:0])
            split[str(path)] = (tr, va)
            n = ds.num_trajectories * ds.num_snapshots
            sq = ds.channel_rms.square() * n
            sumsq = sq if sumsq is None else sumsq + sq
            count += n
    if stream:
        from symaudit.data.stream import StreamedTrajectories

        tr_data = StreamedTrajectories(train, idx, frame)
        va_data = StreamedTrajectories(val, idx, frame)
    else:
        tr_data, va_data = torch.cat(train), torch.cat(val)
    return TransitionData(
        train=tr_data,
        val=va_data,
        layout=layout,
        times=times,
        channel_rms=(sumsq / count).sqrt(),
        split=split,
    )
