"""Faults, corrupt files and non-finite numbers (issue 16): every fault gives one clear error
and leaves what was on disk intact; nothing wrong is written under a final name."""

from __future__ import annotations

import errno
import importlib
import os
import signal
import stat
import subprocess
import sys

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


# ---- training: non-finite steps, corrupt and unwritable checkpoints, bad learning rates ---


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from test_transitions import write_smooth_dataset

    d = tmp_path_factory.mktemp("data")
    write_smooth_dataset(d / "a.h5", n=4, t=4, h=16, seed=0)
    return d


def _train_args(data, out, *extra):
    return ("train", "--model", "unet-tiny", "--data", data, "--out", out, "--epochs", "2",
            "--batch-size", "4", "--quiet", *extra)  # fmt: skip


def _first_epoch(data, out):
    from symaudit.training import TrainConfig, train

    cfg = TrainConfig(model="unet-tiny", data=[str(data)], epochs=2, batch_size=4)
    train(cfg, out, progress=False, stop_after=1)
    return (out / "checkpoint.pt").read_bytes()


def test_training_stops_at_the_first_non_finite_loss_and_keeps_the_good_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    from symaudit.training import SMSE, load_checkpoint

    good = _first_epoch(tiny_data, tmp_path / "run")
    real = SMSE.per_sample
    monkeypatch.setattr(SMSE, "per_sample", lambda self, a, b: real(self, a, b) * torch.nan)
    result = _cli(*_train_args(tiny_data, tmp_path / "run"))
    _one_line_error(result, "non-finite training loss nan", "epoch 2, batch 1", "checkpoint.pt")
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == good
    model, info = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert info.epoch == 1 and all(torch.isfinite(p).all() for p in model.parameters())


def test_second_train_on_a_busy_run_directory_is_refused(tiny_data, tmp_path):
    with _io.exclusive(tmp_path / "run"):  # the first run, still training
        _one_line_error(_cli(*_train_args(tiny_data, tmp_path / "run")), "being written by")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("lr", ["0", "inf", "nan", "-1"])
def test_learning_rate_must_be_positive_and_finite(tiny_data, tmp_path, lr):
    result = _cli(*_train_args(tiny_data, tmp_path / "run", "--lr", lr))
    _one_line_error(result, "lr must be a finite number > 0")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_non_finite_training_data_is_refused_naming_the_place(tmp_path):
    from test_transitions import write_smooth_dataset

    write_smooth_dataset(tmp_path / "a.h5", n=4, t=4, h=16)
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        f["fields"][1, 2, 0, 0, 0] = np.inf
    result = _cli(*_train_args(tmp_path / "a.h5", tmp_path / "run"))
    _one_line_error(result, "a.h5", "inf at trajectory 1, snapshot 2")


def _flip_weights(path, count: int = 64) -> None:
    """Flip ``count`` bytes in the middle of the largest tensor record of a torch zip file
    (the archive stays readable: only the numbers change)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    header = info.header_offset
    name_len, extra_len = (
        int.from_bytes(raw[header + 26 : header + 28], "little"),
        int.from_bytes(raw[header + 28 : header + 30], "little"),
    )
    start = header + 30 + name_len + extra_len + info.file_size // 2 - count // 2
    for k in range(start, start + count):
        raw[k] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_corrupt_checkpoint_is_refused_not_trained_on(tiny_data, tmp_path):
    from symaudit.training import CheckpointError, load_checkpoint

    _first_epoch(tiny_data, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint.pt"
    _flip_weights(ckpt)
    corrupt = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match="checkpoint is corrupt"):
        load_checkpoint(ckpt)
    _one_line_error(_cli(*_train_args(tiny_data, tmp_path / "run")), "checkpoint is corrupt")
    assert ckpt.read_bytes() == corrupt  # not overwritten by a NaN run


def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_old_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    good = _first_epoch(tiny_data, tmp_path / "run")
    monkeypatch.setattr(_io, "_write_bytes", _enospc)
    result = _cli(*_train_args(tiny_data, tmp_path / "run"))
    _one_line_error(result, "checkpoint.pt: No space left on device")
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == good
    assert not [p for p in os.listdir(tmp_path / "run") if p.endswith(".tmp")]


@pytest.mark.parametrize("command", ["train", "audit", "report", "reproduce"])
def test_out_that_is_a_regular_file_is_one_line(tiny_data, audited_run, tmp_path, command):
    out = tmp_path / "taken"
    out.write_text("not a directory")
    args = {  # valid inputs: only the output is wrong
        "train": _train_args(tiny_data, out),
        "audit": ("audit", "--run", audited_run / "run", "--group", "c4", "--out", out),
        "report": ("report", audited_run / "audit", "--out", out),
        "reproduce": ("reproduce", "--preset", "micro", "--out", out, "--quiet"),
    }[command]
    _one_line_error(_cli(*args), "taken")
    assert out.read_text() == "not a directory"


def test_read_only_output_directory_is_one_line(tiny_data, tmp_path, monkeypatch):
    def read_only(path, data):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    # root ignores chmod, so the refusal is injected where every file is written
    monkeypatch.setattr(_io, "_write_bytes", read_only)
    _one_line_error(_cli(*_train_args(tiny_data, tmp_path / "run")), "Permission denied")


# ---- interrupted overwrites keep the old result: SIGKILL at chosen points ------------------


def _killed_cli(patch: str, *argv) -> None:
    """Run the CLI in a subprocess after ``patch`` (code that arms a SIGKILL somewhere);
    assert it died by that signal."""
    script = "\n".join(
        [
            "import os, signal, sys",
            "def die(*a, **k):",
            "    os.kill(os.getpid(), signal.SIGKILL)",
            patch,
            "from symaudit.cli import main",
            f"sys.argv = ['symaudit', *{[str(a) for a in argv]!r}]",
            "main()",
        ]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _tree(path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


_DIE_MID_SWAP = (  # no RENAME_EXCHANGE: killed between moving the old result aside and the new in
    "import symaudit._io as io\n"
    "def no_exchange(a, b): raise OSError(38, 'unsupported')\n"
    "io._exchange = no_exchange\n"
    "real, calls = os.rename, []\n"
    "def rename(a, b):\n"
    "    calls.append(a)\n"
    "    if len(calls) == 2: die()\n"
    "    real(a, b)\n"
    "io.os.rename = rename"
)


@pytest.fixture(scope="module")
def audited_run(tiny_data, tmp_path_factory):
    """A one-epoch tiny run with a complete C4 audit."""
    from symaudit.diagnostics.audit import run_audit
    from symaudit.training import TrainConfig, train

    root = tmp_path_factory.mktemp("audited")
    cfg = TrainConfig(model="unet-tiny", data=[str(tiny_data)], epochs=1, batch_size=4,
                      val_fraction=0.5)  # fmt: skip
    train(cfg, root / "run", progress=False)
    run_audit(root / "run", ["c4"], out=root / "audit", test_batches=1, per_family=1,
              cosine=False)  # fmt: skip
    return root


@pytest.mark.parametrize(
    "patch",
    [
        "from symaudit.diagnostics.equivariance import EquivarianceResult as E\n"
        "real = E.save\n"
        "def save(self, path):\n"
        "    real(self, path); die()\n"
        "E.save = save",
        _DIE_MID_SWAP,
    ],
    ids=["after-first-piece", "between-renames"],
)
def test_killed_audit_overwrite_keeps_the_old_audit(audited_run, tmp_path, patch):
    import shutil

    from symaudit._io import prepare_stage
    from symaudit.diagnostics.audit import load_audit

    out = tmp_path / "audit"
    shutil.copytree(audited_run / "audit", out)
    before = _tree(out)
    args = ("audit", "--run", audited_run / "run", "--group", "d4", "--out", out,
            "--test-batches", "1", "--per-family", "1", "--no-cosine", "--overwrite",
            "--quiet")  # fmt: skip
    _killed_cli(patch, *args)
    prepare_stage(out, keep=True)  # what the next run does first (undoes a half swap)
    assert _tree(out) == before
    assert list(load_audit(out).equivariance) == ["c4"]
    result = _cli(*args)  # the rerun finishes the new audit and swaps it in
    assert result.exit_code == 0, result.output
    assert list(load_audit(out).equivariance) == ["d4"]
    assert sorted(os.listdir(tmp_path)) == ["audit"]


@pytest.mark.parametrize(
    "patch",
    [
        "import matplotlib.figure as mf\n"
        "real, n = mf.Figure.savefig, []\n"
        "def savefig(self, *a, **k):\n"
        "    n.append(1); real(self, *a, **k)\n"
        "    if len(n) == 3: die()\n"
        "mf.Figure.savefig = savefig",
    ],
    ids=["after-three-figures"],  # the swap itself: the audit test's kill between renames
)
def test_killed_report_rewrite_keeps_the_old_report(tmp_path, patch):
    from symaudit._io import prepare_stage
    from symaudit.report import build_report
    from test_report import _study

    dirs = _study(tmp_path, vit_better=True)
    out = tmp_path / "report"
    build_report(dirs[:2], out)
    before = _tree(out)
    _killed_cli(patch, "report", *dirs, "--out", out)
    prepare_stage(out, keep=True)
    assert _tree(out) == before  # not one new figure mixed in


def test_report_counts_a_directory_named_twice_once_and_refuses_one_checkpoint_twice(tmp_path):
    import json

    from symaudit.report import build_report, collect
    from test_report import _study

    unet, vit, _ = _study(tmp_path, vit_better=True)
    build_report([unet, unet, vit, tmp_path / "vit" / ".." / "unet"], tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["audits"] == [str(unet), str(vit)]
    for d in (unet, vit):
        meta = json.loads((d / "audit.json").read_text())
        meta["run"]["checkpoint_sha256"] = "same"
        (d / "audit.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="audit the same checkpoint"):
        collect([unet, vit])


# ---- audits: non-finite models, oversized metric batches, other grids, tuple outputs ------


def _nan_run(audited_run, tmp_path):
    """A copy of the audited run whose weights are NaN (a diverged run, checksum valid)."""
    from symaudit.training.checkpoint import read_checkpoint, save_checkpoint

    data = read_checkpoint(audited_run / "run" / "checkpoint.pt")
    data["model_state"] = {k: v * torch.nan if v.is_floating_point() else v
                           for k, v in data["model_state"].items()}  # fmt: skip
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", data)
    return tmp_path / "run"


def test_audit_refuses_a_model_with_non_finite_outputs(audited_run, tmp_path):
    run = _nan_run(audited_run, tmp_path)
    result = _cli("audit", "--run", run, "--group", "c4", "--out", tmp_path / "a", "--quiet")
    _one_line_error(result, "one-step predictions", "not finite")
    assert not (tmp_path / "a" / "c4").exists()


def test_metric_batch_larger_than_the_distinct_transitions_is_refused(audited_run, tmp_path):
    # 2 training trajectories x 3 transitions = 6 distinct states
    args = ("audit", "--run", audited_run / "run", "--group", "c4", "--out", tmp_path / "a",
            "--test-batches", "1", "--per-family", "1", "--quiet", "--metric-batch")  # fmt: skip
    _one_line_error(_cli(*args, "train:7"), "train:7", "6 distinct training transitions")


def test_test_data_on_another_grid_is_refused(audited_run, tmp_path):
    from test_transitions import write_smooth_dataset

    write_smooth_dataset(tmp_path / "coarse.h5", n=2, t=4, h=32)
    result = _cli("audit", "--run", audited_run / "run", "--group", "c4", "--out",
                  tmp_path / "a", "--test-data", tmp_path / "coarse.h5", "--quiet")  # fmt: skip
    _one_line_error(result, "coarse.h5 is on a 32x32 grid", "trained on 16x16")


def test_influence_of_a_model_returning_a_tuple_is_a_clear_error():
    from symaudit import SMSE, diagnostics, groups
    from symaudit.fields import FieldLayout

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.conv(x), x

    x = torch.rand(2, 4, 4, 4) + 0.5
    layout = FieldLayout.euler()
    with pytest.raises(ValueError, match="the model returned a tuple, not a tensor"):
        diagnostics.influence(Pair(), SMSE(torch.ones(4)), (x, x), groups.Dihedral4(layout))


# ---- reproduce: a unit is unchanged only if its outputs still match its manifest ----------


def test_reproduce_redoes_units_whose_outputs_were_truncated_or_deleted(tmp_path):
    from symaudit.pipeline import reproduce
    from symaudit.pipeline.presets import ModelPlan, StudyPreset
    from symaudit.training import load_checkpoint

    nano = StudyPreset(
        name="nano", families=("ce-rp",), resolution=16, train_trajectories=2,
        test_trajectories=1, snapshots=3, t_final=0.1,
        models=(ModelPlan("unet-tiny", epochs=1, batch_size=2, lr=1e-3),), seeds=(0,),
        groups=("d4",), test_batches=1, per_family=1, max_iter=50,
    )  # fmt: skip
    first = reproduce(nano, tmp_path, progress=False)
    assert first.skipped == []
    data = tmp_path / "data" / "train" / "ce-rp.h5"
    with open_dataset(data) as ds:
        fields = ds.read()
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    (tmp_path / "runs" / "unet-tiny-s0" / "checkpoint.pt").unlink()
    second = reproduce(nano, tmp_path, progress=False)
    assert "generate/train/ce-rp" in second.ran and "train/unet-tiny-s0" in second.ran
    assert "generate/test/ce-rp" in second.skipped
    with open_dataset(data) as ds:
        assert torch.equal(ds.read(), fields)
    load_checkpoint(tmp_path / "runs" / "unet-tiny-s0" / "checkpoint.pt")
    third = reproduce(nano, tmp_path, progress=False)
    assert third.ran == []


def test_audit_refuses_non_finite_predictions_on_transformed_inputs():
    """Finite on the test states, NaN on one transformed input: the audit names the element
    instead of storing NaN errors."""
    from symaudit import SMSE
    from symaudit.diagnostics.audit import AuditError, _require_finite_transformed
    from symaudit.diagnostics.equivariance import equivariance_error
    from symaudit.fields import FieldLayout
    from symaudit.groups import Dihedral4

    class Lopsided(torch.nn.Module):
        def forward(self, x):  # NaN once the larger corner value sits top-left
            bad = x[:, :1, :1, :1] > x[:, :1, -1:, -1:]
            return torch.where(bad, torch.nan, x)

    x = torch.rand(2, 4, 4, 4) + 0.5
    x[:, 0, 0, 0], x[:, 0, -1, -1] = 0.6, 1.4
    eq = equivariance_error(Lopsided(), (x, x), Dihedral4(FieldLayout.euler()), SMSE(torch.ones(4)))
    assert torch.isfinite(eq.error[0]).all()
    with pytest.raises(AuditError, match=r"transformed by \['r', 'r2'"):
        _require_finite_transformed(eq, "d4 batch 1")
