"""Test trajectories from any supported file: our HDF5 format, a PDEGym ``.nc`` file or a The
Well HDF5 file, recognised by content; optionally block-averaged to a coarser grid and mapped
onto the channel layout a model expects."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import torch

from symaudit.data import pdegym, thewell
from symaudit.data.store import FORMAT, DatasetError, _index, open_dataset
from symaudit.fields import FieldLayout, LayoutError

__all__ = ["Trajectories", "detect_format", "read_trajectories", "to_layout"]


@dataclass
class Trajectories:
    """``fields`` `(N, T, C, H, W)` float32 in ``layout``; ``times`` `(T,)` float64;
    ``periodic`` {"x": bool, "y": bool}; ``family`` (initial-condition family or file stem);
    ``source`` (format, file, trajectories, snapshots, ...)."""

    fields: torch.Tensor
    times: torch.Tensor
    layout: FieldLayout
    periodic: dict[str, bool]
    family: str
    source: dict = field(default_factory=dict)


def detect_format(path: str | os.PathLike) -> str:
    """ "symaudit", "pdegym" or "the_well", from the file's content."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if thewell.is_well_file(path):
        return "the_well"
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") == FORMAT:
                return "symaudit"
            if pdegym.VARIABLE in f and f[pdegym.VARIABLE].ndim == 5:
                return "pdegym"
    except OSError as exc:
        raise DatasetError(f"{path}: not an HDF5/netCDF-4 file: {exc}") from exc
    raise DatasetError(f"{path}: not a symaudit dataset, PDEGym .nc file or The Well HDF5 file")


def read_trajectories(
    path: str | os.PathLike,
    *,
    trajectories=None,
    snapshots=None,
    resolution: int | None = None,
    orientation: str = "auto",
) -> Trajectories:
    """Read ``trajectories`` (None: all) at ``snapshots`` (None: all) from ``path``; block
    averaged to ``resolution``^2 when given. ``orientation`` applies to PDEGym and The Well
    files ("auto": decided from the continuity equation)."""
    kind = detect_format(path)
    if kind == "the_well":
        w = thewell.load(
            path, trajectories, snapshots=snapshots, resolution=resolution, orientation=orientation
        )
        return Trajectories(
            w.fields, w.times, w.layout, w.periodic, w.source["dataset_name"], w.source
        )
    if kind == "symaudit":
        with open_dataset(path) as ds:
            fields = ds.read(trajectories, snapshots)
            times = ds.times[torch.as_tensor(_index(snapshots, ds.num_snapshots, "snapshots"))]
            layout, meta = ds.layout, ds.metadata
        periodic = meta.get("boundary", "periodic") == "periodic"
        family = str(meta.get("ic_kind", Path(path).stem))
    else:
        fields = pdegym.load(path, trajectories, orientation=orientation)
        si = _index(snapshots, fields.shape[1], "snapshots")
        fields = fields[:, torch.as_tensor(si)]
        # PDEGym snapshots are uniform on [0, 1]; its CE-* problems are periodic
        times = torch.linspace(0.0, 1.0, pdegym_steps(path), dtype=torch.float64)[si]
        layout, periodic, family = FieldLayout.euler(), True, Path(path).stem
    if resolution:
        fields = thewell.block_average(fields, resolution)
    source = {
        "format": kind,
        "file": str(path),
        "trajectories": None if trajectories is None else list(map(int, _as_list(trajectories))),
        "snapshots": None if snapshots is None else list(map(int, _as_list(snapshots))),
        "resolution": list(fields.shape[-2:]),
    }
    return Trajectories(fields, times, layout, {"x": periodic, "y": periodic}, family, source)


def pdegym_steps(path: str | os.PathLike) -> int:
    with h5py.File(path, "r") as f:
        return int(f[pdegym.VARIABLE].shape[1])


def _as_list(sel) -> list:
    return list(sel) if isinstance(sel, list | tuple | range) else [sel]


def to_layout(data: Trajectories, layout: FieldLayout) -> torch.Tensor:
    """The data's fields with channels in ``layout``'s order: by channel name when every name
    is one of the data's, else by position when scalars and vector components line up."""
    if set(layout.names) <= set(data.layout.names):
        idx = [data.layout.index(n) for n in layout.names]
        src = [data.layout.channels[i] for i in idx]
        if [c.component for c in src] != [c.component for c in layout]:
            raise LayoutError(
                f"layout {layout.names}: the data's channels {[c.name for c in src]} are "
                "scalars/vector components in another arrangement"
            )
        return data.fields[:, :, idx]
    same = [c.component for c in layout] == [c.component for c in data.layout]
    if not same:
        raise LayoutError(
            f"the model's layout {layout} does not match the data's {data.layout}: name the "
            "channels like the data's or list the same scalars and vectors in the same order"
        )
    return data.fields
