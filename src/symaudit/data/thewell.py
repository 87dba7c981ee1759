"""Reader for The Well's compressible-Euler HDF5 files (``euler_multi_quadrants_*``).

Schema (The Well 1.2.0, measured; see NOTES.md):

    attrs                       dataset_name, grid_type, n_spatial_dims (2), n_trajectories,
                                simulation_parameters (["gamma"]), gamma
    dimensions/{time, x, y}     coordinates; attr spatial_dims = ["x", "y"]
    t0_fields/{density, energy, pressure}   (traj, time, x, y)   (attr field_names: order)
    t1_fields/momentum          (traj, time, x, y, 2), last axis (m_x, m_y)
    boundary_conditions/<name>  e.g. x_periodic, y_open: attrs bc_type ("PERIODIC", "OPEN",
                                ...) and associated_dims; a bool dataset ``mask``

We return our conservative layout (rho, m_x, m_y, E) in our axis order (axis -1 is x). The
stored grid is indexed (x, y) per ``spatial_dims``; as with PDEGym files, the reading can be
confirmed physically: under the right one, the snapshots satisfy the continuity equation
d(rho)/dt + div(m) = 0 far better than under the transposed one (`detect_orientation`).
Optional block averaging (``resolution=N``) downsamples 512^2 -> N^2 by averaging b x b cells,
which keeps the cell averages of a finite-volume state conservative (b = 512 / N).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch

from symaudit.data.pdegym import _continuity_residual
from symaudit.data.store import DatasetError, _index
from symaudit.fields import FieldLayout

__all__ = ["WellData", "block_average", "detect_orientation", "is_well_file", "load"]

Orientation = Literal["xy", "yx"]
_SCALARS = ("density", "energy")


def is_well_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is an HDF5 file with The Well's ``t0_fields``/``t1_fields`` groups."""
    try:
        with h5py.File(path, "r") as f:
            return "t0_fields" in f and "t1_fields" in f and "dimensions" in f
    except OSError:
        return False


def _open(path: str | os.PathLike) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file: {exc}") from exc
    need = ["t0_fields/density", "t0_fields/energy", "t1_fields/momentum", "dimensions/time"]
    missing = [k for k in need if k not in f]
    if missing or int(f.attrs.get("n_spatial_dims", 2)) != 2:
        f.close()
        raise DatasetError(
            f"{path}: not a 2D The Well Euler file (missing {missing}; expected "
            "t0_fields/{density,energy}, t1_fields/momentum, dimensions/time)"
        )
    rho, mom = f["t0_fields/density"], f["t1_fields/momentum"]
    if rho.ndim != 4 or mom.shape != (*rho.shape, 2):
        shapes = (rho.shape, mom.shape)
        f.close()
        raise DatasetError(
            f"{path}: density must be (traj, time, x, y) and momentum (traj, time, x, y, 2), "
            f"got {shapes[0]} and {shapes[1]}"
        )
    return f


def _periodic(f: h5py.File) -> dict[str, bool]:
    """{"x": bool, "y": bool} from ``boundary_conditions/*`` (bc_type and associated_dims,
    else the group name's prefix, e.g. "x_periodic"). Axes without a record count as open."""
    out = {"x": False, "y": False}
    for name, grp in f.get("boundary_conditions", {}).items():
        dims = grp.attrs.get("associated_dims", [name.split("_")[0]])
        dims = [d.decode() if isinstance(d, bytes) else str(d) for d in np.atleast_1d(dims)]
        bc = grp.attrs.get("bc_type", name.split("_", 1)[-1])
        bc = bc.decode() if isinstance(bc, bytes) else str(bc)
        for d in dims:
            if d in out:
                out[d] = bc.strip().lower() == "periodic"
    return out


def block_average(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average `(..., H, W)` over b x b blocks to `(..., resolution, resolution)`, b = H / N."""
    h, w = x.shape[-2:]
    if h != w or resolution < 1 or h % resolution:
        raise DatasetError(f"cannot block-average a {h}x{w} grid to {resolution}^2")
    b = h // resolution
    return x.unflatten(-1, (resolution, b)).unflatten(-3, (resolution, b)).mean(dim=(-1, -3))


def _read(f: h5py.File, traj: int, steps: np.ndarray, orientation: Orientation) -> torch.Tensor:
    """Trajectory ``traj`` at ``steps`` as float64 `(T, 4, H, W)` (rho, m_x, m_y, E), axis -1
    = x ("xy": the file's grid is (x, y), transposed here; "yx": already (y, x))."""
    s = list(map(int, steps))
    rho = f["t0_fields/density"][traj, s]
    energy = f["t0_fields/energy"][traj, s]
    mom = f["t1_fields/momentum"][traj, s]
    x = np.stack([rho, mom[..., 0], mom[..., 1], energy], axis=1)
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    return t.transpose(-1, -2) if orientation == "xy" else t


def continuity_residuals(path: str | os.PathLike, trajectory: int = 0) -> dict[str, float]:
    """Relative residual of d(rho)/dt + div(m) = 0 on one trajectory under both readings of
    the grid axes, ``{"xy": r, "yx": r}`` (the physical reading has the far smaller one)."""
    with _open(path) as f:
        times = np.asarray(f["dimensions/time"], dtype=np.float64)
        xs = np.asarray(f["dimensions/x"], dtype=np.float64) if "dimensions/x" in f else None
        steps = np.arange(len(times))
        out = {}
        for o in ("xy", "yx"):
            q = _read(f, trajectory, steps, o)
            # _continuity_residual takes (rho, u, v) on the unit square: u = m_x / rho, and the
            # domain length L enters as the time unit dt / L
            prim = torch.stack([q[:, 0], q[:, 1] / q[:, 0], q[:, 2] / q[:, 0]], dim=1)
            length = (xs[1] - xs[0]) * len(xs) if xs is not None and len(xs) > 1 else 1.0
            dt = float(times[1] - times[0]) / length
            out[o] = _continuity_residual(prim, dt, max_mode=4)
    return out


def detect_orientation(
    path: str | os.PathLike, trajectory: int = 0, *, min_ratio: float = 2.0
) -> Orientation:
    """The axis reading with the smaller continuity residual; `DatasetError` if the two
    differ by less than ``min_ratio``."""
    res = continuity_residuals(path, trajectory)
    best, other = sorted(res, key=res.__getitem__)
    if res[other] < min_ratio * res[best]:
        raise DatasetError(
            f"{path}: cannot tell the axis orientation (continuity residuals {res}); pass "
            "orientation='xy' or 'yx'"
        )
    return best  # type: ignore[return-value]


@dataclass
class WellData:
    """Trajectories read from a The Well file, in symaudit's layout and axis order.

    Attributes: ``fields`` `(N, T, 4, H, W)` float32 (rho, m_x, m_y, E); ``times`` `(T,)`
    float64; ``gamma``; ``periodic`` {"x": bool, "y": bool}; ``orientation``; ``source``.
    """

    fields: torch.Tensor
    times: torch.Tensor
    gamma: float | None
    periodic: dict[str, bool]
    orientation: str
    source: dict = field(default_factory=dict)
    layout: FieldLayout = field(default_factory=FieldLayout.euler)


def load(
    path: str | os.PathLike,
    trajectories=None,
    *,
    snapshots=None,
    resolution: int | None = None,
    orientation: Literal["auto", "xy", "yx"] = "xy",
) -> WellData:
    """Read trajectories (None: all; an index, slice or sequence) at ``snapshots`` (None: all)
    of The Well file ``path``, block-averaged to ``resolution``^2 when given.

    ``orientation``: "xy" trusts ``spatial_dims`` (the stored grid is (x, y)); "yx" reads it
    as (y, x); "auto" decides from the continuity equation on the first trajectory read.
    """
    with _open(path) as f:
        rho = f["t0_fields/density"]
        ti = _index(trajectories, rho.shape[0], "trajectories")
        si = _index(snapshots, rho.shape[1], "snapshots")
        if orientation == "auto":
            orient = detect_orientation(path, int(ti[0]) if len(ti) else 0)
        elif orientation in ("xy", "yx"):
            orient = orientation
        else:
            raise ValueError(f"orientation must be 'auto', 'xy' or 'yx', got {orientation!r}")
        parts = []
        for i in ti:
            q = _read(f, int(i), si, orient)
            parts.append(block_average(q, resolution) if resolution else q)
        times = torch.as_tensor(np.asarray(f["dimensions/time"], dtype=np.float64)[si])
        gamma = float(f.attrs["gamma"]) if "gamma" in f.attrs else None
        periodic = _periodic(f)
        name = f.attrs.get("dataset_name", Path(path).stem)
        name = name.decode() if isinstance(name, bytes) else str(name)
    if not parts:
        raise DatasetError(f"{path}: no trajectories selected")
    fields = torch.stack(parts).to(torch.float32)
    if not torch.isfinite(fields).all():
        raise DatasetError(f"{path}: NaN or infinite values in the selected trajectories")
    source = {
        "format": "the_well",
        "file": str(path),
        "dataset_name": name,
        "trajectories": [int(i) for i in ti],
        "snapshots": [int(s) for s in si],
        "resolution": list(fields.shape[-2:]),
    }
    return WellData(fields, times, gamma, periodic, orient, source)
