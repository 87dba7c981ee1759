"""Small files in The Well's HDF5 schema for ``euler_multi_quadrants_*`` (NOTES.md), written
by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

GAMMA = 1.4


def advected_state(n: int, times: np.ndarray, speed: float = 0.5):
    """Density advected along x at ``speed`` on the unit square (exact continuity solution),
    as The Well stores it: arrays indexed (time, x, y). Returns rho, m (…, 2), E, p."""
    c = (np.arange(n) + 0.5) / n
    x, y = np.meshgrid(c, c, indexing="ij")  # [i, j] = (x_i, y_j)
    t = times[:, None, None]
    rho = 1.0 + 0.3 * np.sin(2 * np.pi * (x - speed * t)) + 0.2 * np.cos(2 * np.pi * y)
    mom = np.stack([rho * speed, np.zeros_like(rho)], axis=-1)
    p = np.ones_like(rho)
    energy = p / (GAMMA - 1) + 0.5 * rho * speed**2
    return rho, mom, energy, p


def write_well_file(
    path: Path, *, n: int = 16, steps: int = 6, trajectories: int = 2, periodic: bool = True
) -> Path:
    """Write ``trajectories`` copies (scaled differently) of `advected_state` to ``path``."""
    times = np.arange(steps) * 0.015
    rho, mom, energy, p = advected_state(n, times)
    scale = 1.0 + 0.1 * np.arange(trajectories)[:, None, None, None]
    with h5py.File(path, "w") as f:
        f.attrs.update(
            dataset_name="euler_multi_quadrants_periodicBC",
            grid_type="cartesian",
            n_spatial_dims=2,
            n_trajectories=trajectories,
            simulation_parameters=["gamma"],
            gamma=GAMMA,
        )
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = ["x", "y"]
        dims["time"] = times
        dims["x"] = (np.arange(n) + 0.5) / n
        dims["y"] = (np.arange(n) + 0.5) / n
        t0 = f.create_group("t0_fields")
        t0.attrs["field_names"] = ["energy", "density", "pressure"]
        t0["energy"] = (scale * energy).astype(np.float32)
        t0["density"] = (scale * rho).astype(np.float32)
        t0["pressure"] = (scale * p).astype(np.float32)
        t1 = f.create_group("t1_fields")
        t1.attrs["field_names"] = ["momentum"]
        t1["momentum"] = (scale[..., None] * mom).astype(np.float32)
        bcs = f.create_group("boundary_conditions")
        kind = "periodic" if periodic else "open"
        for axis in ("x", "y"):
            g = bcs.create_group(f"{axis}_{kind}")
            g.attrs["bc_type"] = kind.upper()
            g.attrs["associated_dims"] = [axis]
            g["mask"] = np.zeros(n, dtype=bool)
    return path
