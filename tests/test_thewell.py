"""Reading The Well's Euler HDF5 files: layout, axis order, orientation check, boundary
conditions, block averaging, format detection."""

import h5py
import numpy as np
import pytest
import torch

from _well_files import advected_state, write_well_file
from symaudit.data import sources, thewell
from symaudit.data.store import DatasetError
from symaudit.fields import FieldLayout


@pytest.fixture
def well(tmp_path):
    return write_well_file(tmp_path / "euler_multi_quadrants_periodicBC.hdf5")


def test_reads_our_layout_and_axis_order(well):
    data = thewell.load(well, [1], snapshots=[0, 3])
    assert data.fields.shape == (1, 2, 4, 16, 16) and data.fields.dtype == torch.float32
    assert data.layout == FieldLayout.euler() and data.gamma == 1.4
    assert data.periodic == {"x": True, "y": True}
    rho, mom, energy, _ = advected_state(16, np.array([0.0, 0.045]))
    want = np.stack([rho, mom[..., 0], mom[..., 1], energy], 1) * 1.1  # trajectory 1 scale
    # stored [x, y]; ours [y, x]: axis -1 is x
    got = data.fields[0].double().numpy()
    assert np.allclose(got, want.transpose(0, 1, 3, 2), rtol=1e-6)
    # rho varies along x at t = 0 ... and m_x = rho * 0.5 everywhere
    assert torch.allclose(data.fields[0, :, 1], 0.5 * data.fields[0, :, 0], rtol=1e-6)
    assert torch.allclose(data.times, torch.tensor([0.0, 0.045], dtype=torch.float64))


def test_orientation_is_detected_physically(well):
    res = thewell.continuity_residuals(well)
    assert res["xy"] < 1e-2 < res["yx"]
    assert thewell.detect_orientation(well) == "xy"
    auto = thewell.load(well, [0], orientation="auto")
    assert auto.orientation == "xy"
    flipped = thewell.load(well, [0], orientation="yx")
    assert torch.equal(flipped.fields, auto.fields.transpose(-1, -2))


def test_block_average_conserves_and_matches_by_hand(well):
    fine = thewell.load(well, [0]).fields.double()
    coarse = thewell.load(well, [0], resolution=4).fields.double()
    assert coarse.shape[-2:] == (4, 4)
    by_hand = fine.reshape(1, 6, 4, 4, 4, 4, 4).mean(dim=(4, 6))
    assert torch.allclose(coarse, by_hand, rtol=1e-6)
    # block averages keep every conserved total (mass, momentum, energy)
    assert torch.allclose(coarse.mean((-1, -2)), fine.mean((-1, -2)), rtol=1e-6)
    with pytest.raises(DatasetError, match="block-average"):
        thewell.load(well, [0], resolution=5)


def test_open_boundaries_are_reported(tmp_path):
    path = write_well_file(tmp_path / "open.hdf5", periodic=False)
    assert thewell.load(path, [0]).periodic == {"x": False, "y": False}


def test_detects_formats_and_refuses_other_files(tmp_path, well):
    assert sources.detect_format(well) == "the_well"
    bad = tmp_path / "other.h5"
    with h5py.File(bad, "w") as f:
        f["t0_fields/density"] = np.zeros((1, 2, 4, 4))
    with pytest.raises(DatasetError, match="not a symaudit dataset"):
        sources.detect_format(bad)
    with pytest.raises(DatasetError, match="not a 2D The Well"):
        thewell.load(bad)
