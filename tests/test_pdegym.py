"""PDEGym reader: files written in exactly PDEGym's layout from a real flow of our solver,
once with the grid transposed, so the orientation detector has something to get wrong."""

import pickle

import h5py
import numpy as np
import pytest
import torch

from symaudit.data import pdegym
from symaudit.data.store import DatasetError
from symaudit.physics import conservative_to_primitive, evolve
from symaudit.physics.initial_conditions import sample


@pytest.fixture(scope="module")
def flow():
    """Two CE-RP trajectories at 32^2, 21 snapshots on [0, 1]: conservative (2, 21, 4, H, W)."""
    ic = sample("ce-rp", 2, 32, seed=1)
    return evolve(ic.state, torch.linspace(0.0, 1.0, 21, dtype=torch.float64))


def _write(path, flow, orientation, *, tamper=None):
    """PDEGym layout: variable `data` (sample, time, 5 = rho, u, v, p, E, x, y) float32.
    "xy": the dim names are right (axis 3 is x); "yx": the file holds our (y, x) order."""
    prim = conservative_to_primitive(flow)
    raw = torch.cat([prim, flow[:, :, 3:]], dim=2).numpy().astype(np.float32)
    if orientation == "xy":
        raw = np.ascontiguousarray(raw.swapaxes(-1, -2))
    if tamper is not None:
        tamper(raw)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=raw)
    return path


@pytest.mark.parametrize("orientation", ["xy", "yx"])
def test_round_trip_and_orientation_detection(tmp_path, flow, orientation):
    path = _write(tmp_path / "CE-RP.nc", flow, orientation)
    report = pdegym.detect_orientation(path)
    assert report.orientation == orientation
    assert report.ratio > 5  # measured ~10 on this flow
    # Transposing without swapping u and v is not a flow: its continuity residual is large.
    wrong = "yx" if orientation == "xy" else "xy"
    assert report.residuals[wrong] > 0.3 and report.residuals[orientation] < 0.1
    loaded = pdegym.load(path)  # orientation="auto"
    assert loaded.shape == (2, 21, 4, 32, 32) and loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, flow.float(), rtol=2e-6, atol=2e-6)
    explicit = pdegym.load(path, [1], orientation=orientation)
    assert torch.equal(explicit[0], loaded[1])
    # The wrong explicit reading is the transposed (garbage) field, not an error.
    assert not torch.allclose(pdegym.load(path, orientation=wrong), loaded)


def test_lazy_dataset(tmp_path, flow):
    path = _write(tmp_path / "CE-RP.nc", flow, "xy")
    ds = pdegym.PDEGymDataset(path)
    assert len(ds) == 2 and ds.orientation == "xy" and ds.num_snapshots == 21
    full = pdegym.load(path)
    assert torch.equal(ds[1], full[1]) and torch.equal(ds[-2], full[0])
    with pytest.raises(IndexError):
        ds[2]
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers pickle the dataset
    assert torch.equal(clone[0], full[0])
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    assert torch.equal(next(iter(loader)), full)


def test_energy_check_and_bad_files(tmp_path, flow):
    def scale_energy(raw):
        raw[:, :, 4] *= 1.01

    bad = _write(tmp_path / "bad.nc", flow, "xy", tamper=scale_energy)
    with pytest.raises(DatasetError, match="energy channel disagrees"):
        pdegym.load(bad, orientation="xy")
    with pytest.raises(DatasetError, match="energy channel disagrees"):
        pdegym.load(bad, orientation="xy", gamma=1.5)

    def negative_density(raw):
        raw[0, 3, 0, 0, 0] = -1.0

    neg = _write(tmp_path / "neg.nc", flow, "xy", tamper=negative_density)
    with pytest.raises(DatasetError, match="non-positive density"):
        pdegym.load(neg, orientation="xy")
    other = tmp_path / "other.nc"
    with h5py.File(other, "w") as f:
        f["solution"] = np.zeros((1, 2, 5, 4, 4), np.float32)
    with pytest.raises(DatasetError, match="no variable 'data'"):
        pdegym.load(other)
    shaped = tmp_path / "shaped.nc"
    with h5py.File(shaped, "w") as f:
        f["data"] = np.ones((1, 2, 4, 4, 4), np.float32)
    with pytest.raises(DatasetError, match="5 = "):
        pdegym.load(shaped)
    with pytest.raises(DatasetError, match="no such PDEGym file"):
        pdegym.load(tmp_path / "absent.nc")
    with pytest.raises(ValueError, match="orientation must be"):
        pdegym.load(bad, orientation="diagonal")


def test_static_flow_orientation_is_undecidable(tmp_path, flow):
    still = flow[:, :1].expand(-1, 5, -1, -1, -1).clone()
    still[:, :, 1:3] = 0.0  # at rest: both readings satisfy continuity exactly
    still[:, :, 3] = flow[:, :1, 3].expand(-1, 5, -1, -1) * 0 + 2.0
    path = _write(tmp_path / "still.nc", still, "xy")
    with pytest.raises(DatasetError, match="cannot tell the axis orientation"):
        pdegym.detect_orientation(path)
