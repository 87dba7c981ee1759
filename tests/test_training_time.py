"""Symmetry learning over training time: the checkpoint schedule (exact points, the kept
weights are those of the run at that step, a SIGKILLed run resumes to exactly the scheduled
checkpoints), the audit of every kept checkpoint (same test states, resumable, skipped when
done) and the report's numbers against the audit files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import test_training
from symaudit import models
from symaudit.cli import app
from symaudit.diagnostics.audit import AuditError
from symaudit.diagnostics.over_training import (
    load_over_training,
    milestones,
    select_checkpoints,
    training_checkpoints,
)
from symaudit.training import CheckpointError, TrainConfig, load_checkpoint, train
from symaudit.training.schedule import CheckpointSchedule, kept_steps
from test_training import _config as _base_config
from test_training import _flat

data_dir = test_training.data_dir  # the same module fixture (two tiny "IC families")


def _config(data_dir: Path, **kw) -> TrainConfig:
    # 11 training trajectories x 5 transitions = 55, batch 8: 6 steps per epoch, 2 epochs
    return _base_config(data_dir, **{"epochs": 2, **kw})


def test_schedule_points_are_the_stated_sequences():
    steps = CheckpointSchedule.parse
    assert steps("geometric").steps(7, 100) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert steps("steps:geometric:4").steps(7, 300) == [0, 1, 4, 16, 64, 256]
    # rounded to whole steps, duplicates dropped: 1, 1.5, 2.25, 3.4, 5.1, 7.6, 11.4
    assert steps("geometric:1.5").steps(7, 12) == [0, 1, 2, 3, 5, 8, 11]
    # epochs e -> step e * steps_per_epoch; cut at the run's 12 epochs
    assert steps("epochs:geometric").steps(27, 324) == [0, 27, 54, 108, 216]
    assert steps("every:3").steps(7, 14) == [0, 3, 6, 9, 12]
    assert steps("epochs:every:2").steps(7, 35) == [0, 14, 28]
    assert steps("5, 0,2").steps(7, 14) == [0, 2, 5]
    with pytest.raises(ValueError, match=r"\[20\] lie beyond the run's last step 14"):
        steps("0,20").steps(7, 14)
    for bad, why in [
        ("geometric:1", "ratio must be > 1"),
        ("every:0", "every:K needs an integer"),
        ("often", "expected"),
        ("0,x", "expected"),
    ]:
        with pytest.raises(ValueError, match=why):
            steps(bad)


def test_kept_checkpoints_hold_the_run_at_their_step(data_dir, tmp_path):
    cfg = _config(data_dir)
    run = tmp_path / "run"
    result = train(cfg, run, progress=False, keep="every:3")  # 12 steps: 0, 3, 6, 9, 12
    assert list(kept_steps(run)) == [0, 3, 6, 9, 12]
    # the final checkpoint is where it always was, the same model as the run returned
    final, info = load_checkpoint(run / "checkpoint.pt")
    assert info.step == 12 and torch.equal(_flat(final), _flat(result.model))
    # step 0 is the initialisation
    torch.manual_seed(cfg.seed)
    init = models.build(cfg.model)
    model, info = load_checkpoint(kept_steps(run)[0] / "checkpoint.pt")
    assert info.step == 0 and torch.equal(_flat(model), _flat(init))
    # steps 3, 6, 9 (mid-epoch, epoch end, mid-epoch): bitwise the weights of a run stopped there
    for s in (3, 6, 9):
        ref = train(cfg, tmp_path / f"stop{s}", progress=False, stop_after_steps=s)
        model, info = load_checkpoint(kept_steps(run)[s] / "checkpoint.pt")
        assert info.step == s and torch.equal(_flat(model), _flat(ref.model))
        assert not torch.equal(_flat(model), _flat(final))  # training moved on after it


def test_sigkilled_run_resumes_to_exactly_the_scheduled_checkpoints(data_dir, tmp_path):
    cfg = _config(data_dir, epochs=3)  # 18 steps
    keep = "geometric:1.5"  # 0, 1, 2, 3, 5, 8, 11, 17: many mid-epoch ones
    reference = tmp_path / "reference"
    train(cfg, reference, progress=False, keep=keep)
    scheduled = CheckpointSchedule.parse(keep).steps(6, 18)
    assert list(kept_steps(reference)) == scheduled
    run = tmp_path / "killed"
    args = ["train", "--model", cfg.model, "--data", str(data_dir), "--out", str(run)]
    args += ["--epochs", "3", "--batch-size", "8", "--lr", "0.01", "--val-fraction", "0.25"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same order as here
    main = [sys.executable, "-c", "from symaudit.cli import main; main()"]
    proc = subprocess.Popen([*main, *args, "--keep", keep, "--quiet"], env=env)
    # kill once step 8 (epoch 2, batch 2) is kept: after epoch 1's checkpoint, so the resume
    # replays (and must rewrite) a kept checkpoint written after the last regular one
    _wait_for(lambda: 8 in kept_steps(run), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, info = load_checkpoint(run / "checkpoint.pt")
    assert 1 <= info.epoch < 3, "the kill must land mid-run for this test to mean anything"
    assert set(kept_steps(run)) < set(scheduled)
    # a temporary file a kill can leave beside a kept checkpoint
    stale = kept_steps(run)[0] / ".checkpoint.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    done = subprocess.run([*main, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr  # without --keep: the recorded one
    assert "resuming" in done.stdout
    assert list(kept_steps(run)) == scheduled
    assert not stale.exists()
    for s, d in kept_steps(reference).items():
        ours, _ = load_checkpoint(kept_steps(run)[s] / "checkpoint.pt")
        theirs, info = load_checkpoint(d / "checkpoint.pt")
        assert info.step == s and torch.equal(_flat(ours), _flat(theirs)), s
    ours, _ = load_checkpoint(run / "checkpoint.pt")
    theirs, _ = load_checkpoint(reference / "checkpoint.pt")
    assert torch.equal(_flat(ours), _flat(theirs))


def _wait_for(ready, proc: subprocess.Popen, seconds: float = 60) -> None:
    """Poll ``ready()`` until true; fail if ``proc`` ends or ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert proc.poll() is None, f"training subprocess ended with {proc.returncode}"
        assert time.monotonic() < deadline, "training subprocess made no progress"
        time.sleep(0.01)


def test_a_resume_cannot_change_the_schedule(data_dir, tmp_path):
    cfg = _config(data_dir)
    run = tmp_path / "run"
    train(cfg, run, progress=False, keep="every:3", stop_after=1)
    with pytest.raises(CheckpointError, match="cannot resume with checkpoint schedule 'every:2'"):
        train(cfg, run, progress=False, keep="every:2")
    plain = tmp_path / "plain"
    train(cfg, plain, progress=False, stop_after=1)
    with pytest.raises(CheckpointError, match="started without a checkpoint schedule"):
        train(cfg, plain, progress=False, keep="every:3")
    # a fresh start drops kept checkpoints its schedule does not have (an earlier attempt's)
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints" / "step-00000005").mkdir(parents=True)
    (fresh / "checkpoints" / "step-00000005" / "checkpoint.pt").write_bytes(b"old")
    train(cfg, fresh, progress=False, keep="0,7")
    assert list(kept_steps(fresh)) == [0, 7]


@pytest.fixture(scope="module")
def audited(data_dir, tmp_path_factory):
    """A run keeping steps 0 and 4 (+ its final step 12), audited on C4 by the CLI."""
    root = tmp_path_factory.mktemp("over")
    run, out = root / "run", root / "audit"
    train(_config(data_dir), run, progress=False, keep="0,4")
    args = ["audit", "--run", str(run), "--checkpoints", "all", "--group", "c4"]
    args += ["--out", str(out), "--per-family", "2", "--rank", "8", "--quiet"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return run, out, args


def test_every_checkpoint_is_audited_on_the_same_states_and_skipped_when_done(audited):
    from symaudit.diagnostics.audit import _load_test_set  # the audit's own test states
    from symaudit.diagnostics.equivariance import equivariance_error
    from symaudit.groups import from_spec
    from symaudit.training import SMSE
    from symaudit.training.checkpoint import read_checkpoint

    run, out, args = audited
    ot = load_over_training(out)
    assert ot.steps == [0, 4, 12] and ot.epochs == [0, 0, 2]
    settings = {json.dumps(a.meta["settings"], sort_keys=True) for a in ot.audits}
    assert len(settings) == 1  # one test set, damping rule, rtol, ... for every checkpoint
    # E_g of each checkpoint's model on the test states, recomputed here, is what was stored
    test = _load_test_set(read_checkpoint(run / "checkpoint.pt"), None)
    batch = test.batch("test", 0, 2, 0)
    for step, rec in zip(ot.steps, ot.audits, strict=True):
        where = run / "checkpoints" / f"step-{step:08d}" if step != 12 else run
        model, info = load_checkpoint(where / "checkpoint.pt")
        assert info.step == step
        group = from_spec("c4", info.layout, resolution=(16, 16), dt=0.05)
        eq = equivariance_error(model, batch, group, SMSE(info.channel_rms))
        assert torch.equal(eq.error, rec.equivariance["c4"][0].error), step
        # the identity's cosine influence is 1 (up to the solves' rtol 5e-3)
        cos = rec.influence["c4"][0].diagonal("cosine")[0]
        assert torch.allclose(cos, torch.ones_like(cos), atol=1e-2)
    # models differ along the series, so do their errors (else the above proves nothing)
    assert not torch.equal(ot.audits[0].equivariance["c4"][0].error, eq.error)
    # a rerun loads nothing and rewrites nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    res = CliRunner().invoke(app, [a for a in args if a != "--quiet"])
    assert res.exit_code == 0, res.output
    assert res.output.count("already audited with these settings") == 3
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == before


def test_checkpoint_selection(audited):
    run, _, _ = audited
    points = training_checkpoints(run)
    assert [p.step for p in points] == [0, 4, 12]
    assert [p.step for p in select_checkpoints(points, "every:2")] == [0, 12]
    assert [p.step for p in select_checkpoints(points, "every:5")] == [0, 12]  # last always
    assert [p.step for p in select_checkpoints(points, "12,4")] == [4, 12]
    with pytest.raises(AuditError, match=r"no checkpoint at steps \[5\]; the run has steps"):
        select_checkpoints(points, "4,5")
    with pytest.raises(AuditError, match="every:K needs"):
        select_checkpoints(points, "every:0")


def test_report_numbers_are_the_audits_medians(audited, tmp_path):
    from symaudit.report.training_time import build_training_time_report

    _, out, _ = audited
    res = CliRunner().invoke(app, ["training-report", str(out), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    numbers = json.loads((tmp_path / "r" / "training_time.json").read_text())
    page = (tmp_path / "r" / "index.html").read_text()
    assert (tmp_path / "r" / "training_time.svg").is_file()
    ot = load_over_training(out)
    c = numbers["models"]["unet-tiny"]["curves"]
    for k, rec in enumerate(ot.audits):
        eq, inf = rec.equivariance["c4"][0], rec.influence["c4"][0]
        np.testing.assert_array_equal(c["median"]["error"][k], np.median(eq.error.numpy(), 1))
        cos = np.median(inf.diagonal("cosine").numpy(), 1)
        np.testing.assert_allclose(c["median"]["cosine"][k], cos, rtol=1e-12)
        moved = np.log10(eq.error.numpy()[1:])
        assert c["orbit"]["log_error"][k] == pytest.approx(moved.mean(), rel=1e-12)
        # the page prints the table's numbers
        assert f"{c['orbit']['log_error'][k]:.3f}" in page
        assert f"{c['orbit']['cosine'][k]:.3f}" in page
    ms = numbers["models"]["unet-tiny"]["milestones"]
    for key in ("log_error", "log_defect", "frobenius"):
        assert f"{ms[key]['extreme']:.3f} at {ms[key]['extreme_step']}" in page
    # the figure drew exactly these values (read back from the artists)
    drawn = numbers["figure"]["unet-tiny"]
    assert drawn["error"]["r"] == pytest.approx([row[1] for row in c["median"]["error"]])
    assert drawn["loss"]["_x"] == [0.0, 4.0, 12.0]
    assert drawn["loss"]["test one-step SMSE"] == pytest.approx(c["test_one_step"])
    assert [h["step"] for h in c["history"]] == [6, 12]
    # a second build replaces the first; a non-report directory is refused
    build_training_time_report([out], tmp_path / "r")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no training-time report"):
        build_training_time_report([out], tmp_path / "other")


def test_milestones_time_the_half_way_points():
    curves = {
        "steps": [0, 1, 4, 16, 64],
        "orbit": {
            # error falls by 2 decades, half-way (-1) first reached at step 16
            "log_error": [0.0, -0.2, -0.9, -1.5, -2.0],
            "log_defect": [-1.0, -1.0, -1.2, -2.0, -3.0],  # half-way (-2) at 16
            "frobenius": [0.1, 0.1, 0.2, 0.3, 0.3],  # half-way (0.2) at 4
            "cosine": [0.2, 0.7, 0.8, 0.8, 0.8],  # half-way (0.5) at 1
        },
    }
    ms = milestones(curves)
    assert [ms[k]["half_way_step"] for k in ("log_error", "log_defect", "frobenius", "cosine")] == [
        16,
        16,
        4,
        1,
    ]
    assert ms["coherence_measure"] == "cosine" and ms["coherence_first"] is True
    assert (ms["cosine"]["extreme"], ms["cosine"]["extreme_step"]) == (0.8, 4)  # first max
    assert (ms["log_defect"]["extreme"], ms["log_defect"]["extreme_step"]) == (-3.0, 64)
    curves["orbit"]["cosine"] = [0.2, 0.2, 0.2, 0.3, 0.9]  # half-way at 64: after the error
    assert milestones(curves)["coherence_first"] is False
    curves["orbit"]["cosine"] = [0.6, 0.7, 0.5, 0.3, 0.2]  # a transient, then falls
    ms = milestones(curves)
    assert ms["cosine"]["half_way_step"] is None and ms["coherence_first"] is None
    assert (ms["cosine"]["extreme"], ms["cosine"]["extreme_step"]) == (0.7, 1)
    curves["orbit"]["cosine"] = [None] * 5  # not computed: the Frobenius diagonal decides
    ms = milestones(curves)
    assert ms["coherence_measure"] == "frobenius" and ms["coherence_first"] is True


def test_training_time_preset_trains_the_study_models_and_reports(micro_study, tmp_path):
    from symaudit.pipeline.training_time import run_training_time

    out = tmp_path / "tt"
    page = run_training_time("micro", out, data=micro_study / "data", progress=False)
    numbers = json.loads((page.parent / "training_time.json").read_text())
    assert sorted(numbers["models"]) == ["unet-tiny", "vit-tiny"]
    for name in ("unet-tiny-s0", "vit-tiny-s0"):
        # the study's own training settings: the final model is the study's, bitwise
        ours, info = load_checkpoint(out / "runs" / name / "checkpoint.pt")
        theirs, _ = load_checkpoint(micro_study / "runs" / name / "checkpoint.pt")
        assert torch.equal(_flat(ours), _flat(theirs))
        steps = numbers["models"][name[:-3]]["curves"]["steps"]
        assert steps == [0, 4, info.step]  # the preset's 0,4 + the final checkpoint
    with pytest.raises(ValueError, match="unknown training-time preset"):
        run_training_time("nope", out)
