"""Reader for PDEGym (Poseidon) compressible-Euler files (CE-RP, CE-CRP, CE-RPUI, ...).

A PDEGym ``.nc`` file is netCDF-4 (HDF5) with one variable ``data`` shaped
`(N, T, 5, A, B)` (usually `(N, 21, 5, 128, 128)`, t uniform on [0, 1]) holding the primitive
channels (rho, u, v, p, E) -- velocities, not momenta -- with dims named
(sample, time, channel, x, y). We return our conservative layout (rho, m_x, m_y, E), m = rho v,
E taken from the file after checking it against p/(gamma - 1) + rho |v|^2 / 2.

Axis orientation: the dim names say the grid axes are (x, y), i.e. ``data[..., i, j]`` is the
value at (x_i, y_j); ours is (y, x) (axis -1 is x). The names are not documented anywhere else,
so the reader can check them physically: under the right reading, the snapshots satisfy the
continuity equation d(rho)/dt + div(rho v) = 0 far better than under the other one (a transpose
without swapping u and v is not a flow at all). `continuity_residuals` measures both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import torch

from symaudit.data.store import DatasetError, _index
from symaudit.fields import FieldLayout

__all__ = [
    "CHANNELS",
    "Orientation",
    "OrientationReport",
    "PDEGymDataset",
    "continuity_residuals",
    "detect_orientation",
    "load",
]

CHANNELS = ("rho", "u", "v", "p", "E")
VARIABLE = "data"
Orientation = Literal["xy", "yx"]
_ORIENTATIONS = ("xy", "yx")


def _open(path: str | os.PathLike) -> tuple[h5py.File, h5py.Dataset]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such PDEGym file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable netCDF-4/HDF5 file: {exc}") from exc
    if VARIABLE not in f:
        f.close()
        raise DatasetError(f"{path}: no variable {VARIABLE!r} (is this a PDEGym CE-* file?)")
    data = f[VARIABLE]
    if data.ndim != 5 or data.shape[2] != len(CHANNELS) or data.dtype.kind != "f":
        shape, dtype = data.shape, data.dtype
        f.close()
        raise DatasetError(
            f"{path}: {VARIABLE!r} must be float (sample, time, 5 = {CHANNELS}, x, y), got "
            f"{dtype} {shape}"
        )
    return f, data


def _to_ours(raw: np.ndarray, orientation: Orientation) -> torch.Tensor:
    """Raw `(..., 5, A, B)` -> float64 `(..., 5, H, W)` with axis -1 = x."""
    x = torch.from_numpy(np.asarray(raw, dtype=np.float64))
    return x.transpose(-1, -2) if orientation == "xy" else x


def _conservative(prim: torch.Tensor, gamma: float, energy_rtol: float, where: str) -> torch.Tensor:
    """`(..., 5, H, W)` (rho, u, v, p, E) -> `(..., 4, H, W)` (rho, m_x, m_y, E)."""
    rho, u, v, p, energy = prim.unbind(-3)
    if not torch.isfinite(prim).all():
        raise DatasetError(f"{where}: contains NaN or infinite values")
    if (rho <= 0).any() or (p <= 0).any():
        raise DatasetError(f"{where}: non-positive density or pressure")
    expected = p / (gamma - 1.0) + 0.5 * rho * (u * u + v * v)
    err = ((energy - expected).abs() / expected.abs().clamp_min(1e-12)).max().item()
    if err > energy_rtol:
        raise DatasetError(
            f"{where}: energy channel disagrees with p/(gamma-1) + rho|v|^2/2 (max relative "
            f"error {err:.3g} > {energy_rtol:g}; wrong gamma={gamma} or channel order?)"
        )
    return torch.stack([rho, rho * u, rho * v, energy], dim=-3)


def _continuity_residual(prim: torch.Tensor, dt: float, max_mode: int) -> float:
    """Relative residual of d(rho)/dt + div(rho v) = 0 on `(T, 5, H, W)` primitive snapshots
    (axis -1 = x, periodic unit square), forward difference in time and trapezoidal flux,
    measured on the Fourier modes 0 < |k|_inf <= max_mode: on these large scales the coarse
    snapshot spacing and the shocks contribute little, while a wrong axis reading does not."""
    rho, u, v = prim[:, 0], prim[:, 1], prim[:, 2]
    h, w = rho.shape[-2:]
    ky = torch.fft.fftfreq(h, 1.0 / h, dtype=torch.float64).view(h, 1)
    kx = torch.fft.fftfreq(w, 1.0 / w, dtype=torch.float64).view(1, w)
    keep = (torch.maximum(kx.abs(), ky.abs()) <= max_mode) & ((kx != 0) | (ky != 0))
    fft = torch.fft.fft2
    fx = 2j * torch.pi * kx * fft(rho * u)
    fy = 2j * torch.pi * ky * fft(rho * v)
    fx, fy = 0.5 * (fx[1:] + fx[:-1])[:, keep], 0.5 * (fy[1:] + fy[:-1])[:, keep]
    rho_hat = fft(rho)[:, keep]
    drho = (rho_hat[1:] - rho_hat[:-1]) / dt
    # Normalised by the size of each term, so nearly incompressible flows (where d(rho)/dt and
    # div(rho v) are both small) are judged by how well d/dx(rho u) and d/dy(rho v) cancel.
    scale = drho.norm() + fx.norm() + fy.norm()
    return float((drho + fx + fy).norm() / scale.clamp_min(1e-300))


def continuity_residuals(
    path: str | os.PathLike, trajectories=(0,), *, t_final: float = 1.0, max_mode: int = 4
) -> dict[str, float]:
    """Relative continuity-equation residual of the selected trajectories under both readings
    of the grid axes: ``{"xy": r, "yx": r}``; "xy" trusts the dim names (transposes to our
    (y, x) order), "yx" reads the file as already (y, x). Snapshots are assumed uniform on
    [0, t_final]; the residual is measured on Fourier modes up to ``max_mode``. The physical
    reading has the (much) smaller residual."""
    f, data = _open(path)
    with f:
        ti = _index(trajectories, data.shape[0], "trajectories")
        steps = data.shape[1]
        if steps < 2:
            raise DatasetError(f"{path}: need at least 2 snapshots to check orientation")
        raw = np.stack([data[int(i)] for i in ti])
    dt = t_final / (steps - 1)
    return {
        o: float(np.mean([_continuity_residual(_to_ours(r, o), dt, max_mode) for r in raw]))
        for o in _ORIENTATIONS
    }


@dataclass(frozen=True)
class OrientationReport:
    """Result of `detect_orientation`: the chosen reading and both residuals."""

    orientation: Orientation
    residuals: dict[str, float]
    ratio: float


def detect_orientation(
    path: str | os.PathLike, trajectories=(0,), *, t_final: float = 1.0, min_ratio: float = 2.0
) -> OrientationReport:
    """Pick the axis reading with the smaller continuity residual; raise `DatasetError` when
    the two differ by less than ``min_ratio`` (e.g. a flow that barely moves)."""
    res = continuity_residuals(path, trajectories, t_final=t_final)
    best, other = sorted(_ORIENTATIONS, key=res.__getitem__)
    ratio = res[other] / max(res[best], 1e-300)
    if ratio < min_ratio:
        raise DatasetError(
            f"{path}: cannot tell the axis orientation (continuity residuals {res}); pass "
            "orientation='xy' or 'yx' explicitly"
        )
    return OrientationReport(best, res, ratio)


def _resolve(path, orientation: str, t_final: float) -> Orientation:
    if orientation == "auto":
        return detect_orientation(path, t_final=t_final).orientation
    if orientation not in _ORIENTATIONS:
        raise ValueError(f"orientation must be 'auto', 'xy' or 'yx', got {orientation!r}")
    return orientation  # type: ignore[return-value]


def load(
    path: str | os.PathLike,
    trajectories=None,
    *,
    orientation: Literal["auto", "xy", "yx"] = "auto",
    gamma: float = 1.4,
    energy_rtol: float = 1e-4,
    t_final: float = 1.0,
) -> torch.Tensor:
    """Read PDEGym trajectories as conservative fields `(N, T, 4, H, W)` float32.

    Args:
        trajectories: None (all), an index, slice or sequence of indices.
        orientation: "xy" (dim names are right: transpose to our (y, x)), "yx" (file already
            (y, x)), or "auto" (decided by `detect_orientation` on trajectory 0).
        gamma: used only to check the stored energy against the primitive variables.
        energy_rtol: maximum relative disagreement allowed in that check.
        t_final: time of the last snapshot (for the orientation check).
    """
    orient = _resolve(path, orientation, t_final)
    f, data = _open(path)
    with f:
        ti = _index(trajectories, data.shape[0], "trajectories")
        out = []
        for i in ti:
            prim = _to_ours(data[int(i)], orient)
            out.append(_conservative(prim, gamma, energy_rtol, f"{path} trajectory {i}"))
    if not out:
        h, w = data.shape[-1:-3:-1] if orient == "xy" else data.shape[-2:]
        return torch.empty(0, data.shape[1], 4, h, w)
    return torch.stack(out).to(torch.float32)


class PDEGymDataset(torch.utils.data.Dataset):
    """Lazily indexed PDEGym file: item i is trajectory i as `(T, 4, H, W)` float32
    (conservative). Reads one trajectory per access, so files larger than memory work; the
    HDF5 handle is opened per process on first access (safe with DataLoader workers)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        orientation: Literal["auto", "xy", "yx"] = "auto",
        gamma: float = 1.4,
        energy_rtol: float = 1e-4,
        t_final: float = 1.0,
    ) -> None:
        self.path = Path(path)
        f, data = _open(self.path)
        with f:
            self._len, self.num_snapshots = int(data.shape[0]), int(data.shape[1])
        self.orientation = _resolve(self.path, orientation, t_final)
        self.gamma, self.energy_rtol = gamma, energy_rtol
        self.layout = FieldLayout.euler()
        self._handle: tuple[int, h5py.File, h5py.Dataset] | None = None

    def _data(self) -> h5py.Dataset:
        if self._handle is None or self._handle[0] != os.getpid():
            f, data = _open(self.path)
            self._handle = (os.getpid(), f, data)
        return self._handle[2]

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self._len <= index < self._len:
            raise IndexError(f"trajectory {index} out of range for {self._len} trajectories")
        index %= self._len
        prim = _to_ours(self._data()[index], self.orientation)
        where = f"{self.path} trajectory {index}"
        return _conservative(prim, self.gamma, self.energy_rtol, where).to(torch.float32)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"] = None  # h5py handles do not pickle; reopened lazily
        return state
