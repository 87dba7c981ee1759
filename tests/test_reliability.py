"""Faults, corrupt files and non-finite numbers (issue 16): every fault gives one clear error
and leaves what was on disk intact; nothing wrong is written under a final name."""

from __future__ import annotations

import errno
import importlib
import os
import stat

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from symaudit import _io
from symaudit.cli import app
from symaudit.data import open_dataset, write_dataset
from symaudit.data.generate import GenerationError, GenerationSettings, generate, partial_path
from symaudit.data.store import DatasetError
from symaudit.errors import BusyError
from symaudit.fields import FieldLayout

gen_mod = importlib.import_module("symaudit.data.generate")  # the package exports a function
TINY = GenerationSettings(kind="ce-rp", trajectories=3, resolution=8, snapshots=3, t_final=0.05)


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(result, *needles: str) -> None:
    """Exit code 2, one 'error:' line on stderr naming every needle, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---- generate: full disk, lost writes, a second writer, absurd CFL -----------------------


def test_generate_full_disk_is_one_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(gen_mod.os, "posix_fallocate", _enospc)
    out = tmp_path / "d.h5"
    _one_line_error(
        _cli("generate", "--out", out, "--trajectories", "3", "--resolution", "8"),
        "d.h5.partial",
        "No space left on device",
    )
    assert sorted(os.listdir(tmp_path)) == []  # nothing under any name, not even the partial


def test_generate_verifies_every_trajectory_before_the_final_name(tmp_path, monkeypatch):
    real = gen_mod._write_batch

    def lose_trajectory_1(f, index, traj, params):  # a write the disk silently dropped
        keep = [j for j, i in enumerate(index) if i != 1]
        real(f, [index[j] for j in keep], traj[keep], {k: v[keep] for k, v in params.items()})

    monkeypatch.setattr(gen_mod, "_write_batch", lose_trajectory_1)
    out = tmp_path / "d.h5"
    with pytest.raises(GenerationError, match="trajectory 1 reads back"):
        generate(TINY, out)
    assert not out.exists() and partial_path(out).exists()


def test_second_generate_on_a_busy_output_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "d.h5"
    with _io.exclusive(out):  # the first run, still writing
        with pytest.raises(BusyError, match=f"pid {os.getpid()}"):
            generate(TINY, out, overwrite=True)
    generate(TINY, out)  # the lock died with its holder
    with open_dataset(out) as ds:
        assert ds.complete and ds.num_trajectories == 3
    assert sorted(os.listdir(tmp_path)) == ["d.h5"]


def test_generate_refuses_absurd_step_counts_up_front(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"cfl must be in \[0.01, 1\]"):
        generate(GenerationSettings(**{**TINY.fingerprint(), "cfl": 1e-9}), tmp_path / "a.h5")
    monkeypatch.setattr(gen_mod, "MAX_STEPS", 5)
    with pytest.raises(GenerationError, match="solver steps per trajectory"):
        generate(TINY, tmp_path / "b.h5")
    assert not (tmp_path / "b.h5").exists()


def test_generate_out_below_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    _one_line_error(_cli("generate", "--out", tmp_path / "file" / "d.h5"), "file")


# ---- reading data: non-finite values are named --------------------------------------------


def test_non_finite_data_names_file_trajectory_and_snapshot(tmp_path):
    fields = torch.rand(3, 4, 4, 8, 8) + 0.5
    path = write_dataset(tmp_path / "d.h5", fields, torch.arange(4.0), FieldLayout.euler(), {})
    with h5py.File(path, "r+") as f:
        f["fields"][2, 3, 1, 4, 5] = np.nan
    with open_dataset(path) as ds:
        ds.read([0, 1], None)  # the good trajectories still read
        with pytest.raises(
            DatasetError, match=r"d\.h5.*nan at trajectory 2, snapshot 3, channel 1"
        ):
            ds.read()


# ---- files honour the umask ---------------------------------------------------------------


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        _io.atomic_write_text(tmp_path / "a.txt", "a")
        _io.atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o664
