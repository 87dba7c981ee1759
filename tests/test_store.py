"""The HDF5 dataset store: round trip, atomic writes, and every DatasetError path."""

import json

import h5py
import numpy as np
import pytest
import torch

from symaudit import FieldLayout
from symaudit.data import channel_rms
from symaudit.data.store import DatasetError, open_dataset, write_dataset

LAYOUT = FieldLayout.euler()
META = {
    "gamma": 1.4,
    "domain": "unit square",
    "boundary": "periodic",
    "ic_kind": "ce-rp",
    "seed": 7,
    "solver": {"cfl": 0.4},
}


@pytest.fixture
def fields():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 4, 6, 8, generator=g, dtype=torch.float64) + 2.0


@pytest.fixture
def written(tmp_path, fields):
    path = tmp_path / "d.h5"
    params = {"rho": torch.arange(16.0).view(4, 4), "alpha": torch.ones(4, 2, 2, 2)}
    write_dataset(path, fields, [0.0, 0.5, 1.0], LAYOUT, META, params=params)
    return path


def test_round_trip(written, fields):
    with open_dataset(written) as ds:
        assert ds.num_trajectories == 4 and ds.num_snapshots == 3 and len(ds) == 4
        assert ds.resolution == (6, 8) and ds.layout == LAYOUT
        assert torch.equal(ds.times, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
        full = ds.read()
        assert full.dtype == torch.float32 and full.shape == (4, 3, 4, 6, 8)
        assert torch.equal(full, fields.float())
        # Order and repeats of the selection are kept.
        sub = ds.read([3, 1, 3], [2, 0])
        assert torch.equal(sub, fields.float()[[3, 1, 3]][:, [2, 0]])
        assert torch.equal(ds.read(slice(1, 3), 1), fields.float()[1:3, 1:2])
        for key, value in META.items():
            assert ds.metadata[key] == value
        assert ds.metadata["package_version"]
        # Statistics computed with RunningRMS from the stored float32 fields; vectors share.
        torch.testing.assert_close(ds.channel_rms, channel_rms(fields.float(), LAYOUT))
        assert ds.channel_rms[1] == ds.channel_rms[2]
        params = ds.read_params()
        assert torch.equal(params["rho"], torch.arange(16.0, dtype=torch.float64).view(4, 4))
        assert params["alpha"].shape == (4, 2, 2, 2)
    with h5py.File(written) as f:  # self-describing for non-Python readers
        assert f["fields"].chunks == (1, 1, 4, 6, 8)
        assert list(f.attrs["channel_names"]) == ["rho", "m_x", "m_y", "E"]
        assert f.attrs["gamma"] == 1.4 and f.attrs["ic_kind"] == "ce-rp"
        assert FieldLayout.from_json(f.attrs["layout"]) == LAYOUT


def test_explicit_channel_rms_and_index_errors(tmp_path, fields):
    path = write_dataset(
        tmp_path / "e.h5",
        fields,
        [0, 1, 2],
        LAYOUT,
        META,
        channel_rms=torch.tensor([1.0, 2.0, 2.0, 3.0]),
    )
    with open_dataset(path) as ds:
        assert ds.channel_rms.tolist() == [1.0, 2.0, 2.0, 3.0]
        with pytest.raises(IndexError, match="out of range"):
            ds.read([4])
        with pytest.raises(IndexError, match="integers"):
            ds.read([0.5])


def test_write_is_atomic_and_validates(tmp_path, fields, written):
    before = written.read_bytes()
    bad = fields.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_dataset(written, bad, [0, 1, 2], LAYOUT, META)
    with pytest.raises(ValueError, match="snapshots"):
        write_dataset(written, fields, [0, 1], LAYOUT, META)
    with pytest.raises(ValueError, match="strictly increasing"):
        write_dataset(written, fields, [0, 1, 1], LAYOUT, META)
    with pytest.raises(ValueError, match="channels"):
        write_dataset(written, fields[:, :, :3], [0, 1, 2], LAYOUT, META)
    with pytest.raises(ValueError, match="JSON"):
        write_dataset(written, fields, [0, 1, 2], LAYOUT, {"x": object()})
    assert written.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]  # no temporary left over


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f.__delitem__("times"), "missing dataset 'times'"),
        (lambda f: f.__delitem__("fields"), "missing dataset 'fields'"),
        (lambda f: f.__delitem__("channel_rms"), "missing dataset 'channel_rms'"),
        (lambda f: f.attrs.__setitem__("format", "other"), "not a symaudit dataset"),
        (lambda f: f.attrs.__setitem__("format_version", 99), "format version 99"),
        (lambda f: f.attrs.__delitem__("layout"), "missing attribute 'layout'"),
        (lambda f: f.attrs.__setitem__("layout", "{not json"), "invalid field layout"),
        (
            lambda f: f.attrs.__setitem__(
                "layout", FieldLayout.from_dict({"channels": [{"name": "a"}]}).to_json()
            ),
            "disagree with layout",
        ),
        (lambda f: f.attrs.__setitem__("metadata", "{oops"), "metadata attribute"),
        (lambda f: f.attrs.__setitem__("channel_names", ["a", "b", "c", "d"]), "channel_names"),
        (lambda f: f["times"].__setitem__(1, 0.0), "strictly increasing"),
        (lambda f: f["done"].__setitem__(2, 0), r"incomplete dataset \(3 of 4"),
        (lambda f: f["channel_rms"].__setitem__(0, np.nan), "channel statistics missing"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_validation_error_is_named(written, edit, message):
    _edit(written, edit)
    with pytest.raises(DatasetError, match=message):
        open_dataset(written)


def test_wrong_layout_channel_count(tmp_path, fields):
    # A file whose layout describes 4 channels but whose fields have 3.
    three = FieldLayout.from_dict({"channels": [{"name": n} for n in ("a", "b", "c")]})
    path = write_dataset(tmp_path / "f.h5", fields[:, :, :3], [0, 1, 2], three, META)
    _edit(
        path,
        lambda f: (
            f.attrs.__setitem__("layout", LAYOUT.to_json()),
            f.attrs.__setitem__("channel_names", list(LAYOUT.names)),
        ),
    )
    with pytest.raises(DatasetError, match="3 channels but the layout"):
        open_dataset(path)


def test_incomplete_file_can_be_inspected_but_not_read(written):
    _edit(written, lambda f: f["done"].__setitem__(1, 0))
    with open_dataset(written, allow_incomplete=True) as ds:
        assert not ds.complete and ds.done.tolist() == [True, False, True, True]
        assert ds.read([0, 2]).shape[0] == 2
        with pytest.raises(DatasetError, match=r"trajectories \[1\] were never written"):
            ds.read()


def test_missing_corrupt_and_truncated_files(tmp_path, written):
    with pytest.raises(DatasetError, match="no such dataset file"):
        open_dataset(tmp_path / "absent.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not an HDF5 file" * 100)
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        open_dataset(junk)
    data = written.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated"):
        open_dataset(cut)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DatasetError, match="not a symaudit dataset"):
        open_dataset(other)


def test_metadata_is_json_in_the_file(written):
    with h5py.File(written) as f:
        assert json.loads(f.attrs["metadata"])["solver"] == {"cfl": 0.4}
