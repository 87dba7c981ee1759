"""Trajectories read from the dataset files on demand, for training sets larger than memory.

`StreamedTrajectories` stands in for the `(n, T, C, H, W)` float32 tensor that
`load_transitions` otherwise holds (``stream=True``): it has the same ``shape`` and answers the
same indexing -- a slice of trajectories, or ``[traj, steps]`` with index tensors as
`TransitionData.pairs` uses -- with the same values, read chunk by chunk (our files store one
snapshot per HDF5 chunk, so one sample is one chunk per snapshot). Memory is bounded by what
is asked for, not by the dataset. `prefetched` overlaps the next batch's reads with the
current step's compute in one background thread.
"""

from __future__ import annotations

import bisect
import concurrent.futures
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch

__all__ = ["StreamedTrajectories", "prefetched"]

T = TypeVar("T")
R = TypeVar("R")


class StreamedTrajectories:
    """The selected trajectories of several files, concatenated file by file.

    Args:
        files: (path, trajectory ids of that file) in concatenation order.
        snapshots: the snapshot indices selected in every file (length T).
        frame: (C, H, W) of one snapshot.
    """

    def __init__(
        self,
        files: Sequence[tuple[str | Path, Sequence[int]]],
        snapshots: Sequence[int],
        frame: tuple[int, int, int],
    ) -> None:
        from symaudit.data.store import open_dataset

        self._ids = [list(ids) for _, ids in files]
        self._datasets = [open_dataset(p) if ids else None for p, ids in files]
        self._starts = [0]
        for ids in self._ids:
            self._starts.append(self._starts[-1] + len(ids))
        self._snapshots = list(snapshots)
        self.shape = torch.Size((self._starts[-1], len(self._snapshots), *frame))
        self.dtype = torch.float32

    def __len__(self) -> int:
        return self.shape[0]

    def _locate(self, i: int) -> tuple[int, int]:
        """Global trajectory i -> (file number, trajectory id in that file)."""
        if not 0 <= i < len(self):
            raise IndexError(f"trajectory {i} out of range 0..{len(self) - 1}")
        f = bisect.bisect_right(self._starts, i) - 1
        return f, self._ids[f][i - self._starts[f]]

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            return self._range(*key.indices(len(self)))
        if isinstance(key, tuple) and len(key) == 2:
            traj, steps = (torch.as_tensor(k) for k in key)
            traj, steps = torch.broadcast_tensors(traj, steps)
            return self._gather(traj, steps)
        raise TypeError(f"index with a slice or (trajectories, steps) tensors, got {key!r}")

    def _range(self, start: int, stop: int, step: int) -> torch.Tensor:
        rows = list(range(start, stop, step))
        if not rows:
            return torch.empty(0, *self.shape[1:], dtype=self.dtype)
        parts, run = [], []
        for i in rows:  # consecutive rows of one file are read in one call
            f, tid = self._locate(i)
            if run and run[0][0] != f:
                parts.append(self._read(run))
                run = []
            run.append((f, tid))
        parts.append(self._read(run))
        return torch.cat(parts)

    def _read(self, run: list[tuple[int, int]]) -> torch.Tensor:
        f = run[0][0]
        return self._datasets[f].read([t for _, t in run], self._snapshots)

    def _gather(self, traj: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """out[b, j] = trajectory traj[b, j] at selected snapshot steps[b, j]."""
        flat_t, flat_s = traj.reshape(-1).tolist(), steps.reshape(-1).tolist()
        out = torch.empty(len(flat_t), *self.shape[2:], dtype=self.dtype)
        for k, (i, s) in enumerate(zip(flat_t, flat_s, strict=True)):
            f, tid = self._locate(int(i))
            out[k] = self._datasets[f].read([tid], [self._snapshots[int(s)]])[0, 0]
        return out.reshape(*traj.shape, *self.shape[2:])

    def close(self) -> None:
        for ds in self._datasets:
            if ds is not None:
                ds.close()
        self._datasets = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to release
            pass


def prefetched(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``fn(item)`` for each item in order, the next one computed in a background thread
    while the caller works on the current one (at most two results alive at once)."""
    it = iter(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pending = pool.submit(fn, next(it))
        except StopIteration:
            return
        for item in it:
            result = pending.result()
            pending = pool.submit(fn, item)
            yield result
        yield pending.result()
