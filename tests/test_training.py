"""Training loop: it learns, resumes bit-for-bit (also after SIGKILL), matches under DDP, and
refuses corrupt or mismatched checkpoints with a clear error."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from typer.testing import CliRunner

from symaudit import models
from symaudit.cli import app
from symaudit.data.transitions import load_transitions
from symaudit.training import CheckpointError, TrainConfig, evaluate, load_checkpoint, train
from symaudit.training.loss import SMSE
from test_transitions import write_smooth_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_smooth_dataset(d / "a.h5", n=10, t=6, h=16, seed=0)  # two "IC families"
    write_smooth_dataset(d / "b.h5", n=6, t=6, h=16, seed=1)
    return d


def _config(data_dir: Path, **kw) -> TrainConfig:
    base = dict(
        model="unet-tiny",
        data=[str(data_dir)],
        epochs=3,
        batch_size=8,
        lr=1e-2,
        val_fraction=0.25,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _same_history(a: list[dict], b: list[dict]) -> bool:
    drop = {"seconds", "samples_per_second"}
    return [{k: v for k, v in m.items() if k not in drop} for m in a] == [
        {k: v for k, v in m.items() if k not in drop} for m in b
    ]


def test_tiny_training_run_lowers_the_validation_loss(data_dir, tmp_path):
    cfg = _config(data_dir, epochs=5, schedule="constant")
    data = load_transitions(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # the trainer initialises the same way
    before = evaluate(models.build(cfg.model), data.val, SMSE(data.channel_rms))
    result = train(cfg, tmp_path / "run", progress=False)
    after = result.history[-1]
    assert after["val_one_step"] < 0.75 * before["one_step"], (before, after)
    assert after["val_rollout_mean"] < before["rollout_mean"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5]
    # the checkpoint alone rebuilds the model: same validation numbers
    model, info = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert info.epoch == 5 and info.model_config["preset"] == "unet-tiny"
    assert sorted(info.split) == sorted(str(p) for p in data_dir.glob("*.h5"))
    torch.testing.assert_close(info.channel_rms, data.channel_rms)
    again = evaluate(model, data.val, SMSE(info.channel_rms))
    assert again["one_step"] == pytest.approx(after["val_one_step"], rel=1e-6)


def test_resume_after_an_interruption_is_bitwise_identical(data_dir, tmp_path):
    cfg = _config(data_dir, epochs=2, augment="d4+shift", unroll=2)
    full = train(cfg, tmp_path / "full", progress=False)
    first = train(cfg, tmp_path / "split", progress=False, stop_after=1)
    assert first.epochs_run == 1
    # what a writer killed mid-save leaves (symaudit._io.atomic_path's temporary name)
    stale = tmp_path / "split" / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    rest = train(cfg, tmp_path / "split", progress=False)
    assert not stale.exists()
    assert rest.epochs_run == 1
    assert torch.equal(_flat(full.model), _flat(rest.model))
    assert _same_history(full.history, rest.history)
    assert train(cfg, tmp_path / "split", progress=False).epochs_run == 0  # already done
    # interrupted mid-epoch, right after an intra-epoch checkpoint (4 steps per epoch here)
    mid = _config(data_dir, epochs=2, augment="d4+shift", unroll=2, checkpoint_every=3)
    part = train(mid, tmp_path / "mid", progress=False, stop_after_steps=3)
    assert part.epochs_run == 0 and load_checkpoint(tmp_path / "mid" / "checkpoint.pt")[1].step == 3
    rest = train(mid, tmp_path / "mid", progress=False)
    assert torch.equal(_flat(full.model), _flat(rest.model))
    assert _same_history(full.history, rest.history)
    # and the augmentation really changes training (else this test would prove little)
    plain = train(_config(data_dir, epochs=2, unroll=2), tmp_path / "plain", progress=False)
    assert not torch.equal(_flat(full.model), _flat(plain.model))


def test_sigkilled_cli_run_resumes_to_the_same_parameters(data_dir, tmp_path):
    cfg = _config(data_dir, epochs=5)
    # as many threads here (fixture) as in the subprocess: the same summation order
    reference = train(cfg, tmp_path / "reference", progress=False)
    run = tmp_path / "killed"
    cmd = [sys.executable, "-c", "from symaudit.cli import main; main()", "train"]
    cmd += ["--model", cfg.model, "--data", str(data_dir), "--out", str(run)]
    cmd += ["--epochs", "5", "--batch-size", "8", "--lr", "0.01", "--val-fraction", "0.25"]
    cmd += ["--checkpoint-every", "1", "--quiet"]  # kills may land mid-epoch too
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same order as here
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "training subprocess made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, info = load_checkpoint(run / "checkpoint.pt")
    assert 1 <= info.epoch < 5, "the kill must land mid-run for this test to mean anything"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming" in done.stdout
    model, info = load_checkpoint(run / "checkpoint.pt")
    assert info.epoch == 5
    assert torch.equal(_flat(model), _flat(reference.model))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 5


def _ddp_worker(rank: int, world: int, init_file: str, cfg_dict: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = train(TrainConfig.from_dict(cfg_dict), out, progress=False)
        Path(out, f"samples-{rank}.txt").write_text(str(result.samples_seen))
    finally:
        dist.destroy_process_group()


def test_ddp_on_two_cpu_processes_matches_a_single_process(data_dir, tmp_path):
    cfg = _config(data_dir, epochs=2, dtype="float64", augment="d4", checkpoint_every=2)
    single = train(cfg, tmp_path / "single", progress=False)
    out = tmp_path / "ddp"
    mp.spawn(
        _ddp_worker,
        args=(2, str(tmp_path / "rendezvous"), cfg.to_dict(), str(out)),
        nprocs=2,
        join=True,
    )
    model, info = load_checkpoint(out / "checkpoint.pt")
    torch.testing.assert_close(_flat(model), _flat(single.model), rtol=1e-10, atol=1e-12)
    # each rank really trained on half of every global batch
    seen = [int((out / f"samples-{r}.txt").read_text()) for r in range(2)]
    assert seen == [single.samples_seen // 2] * 2
    assert info.history[-1]["train_loss"] == pytest.approx(single.history[-1]["train_loss"])


def test_corrupt_or_mismatched_checkpoints_give_clear_errors(data_dir, tmp_path):
    cfg = _config(data_dir, epochs=1)
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    good = (run / "checkpoint.pt").read_bytes()

    with pytest.raises(CheckpointError, match="different settings.*lr"):
        train(_config(data_dir, epochs=1, lr=1e-3), run, progress=False)

    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match="not a symaudit checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")

    data = torch.load(run / "checkpoint.pt", weights_only=True)
    data["model_config"]["kwargs"]["width"] = 3  # weights no longer fit the description
    torch.save(data, bad)  # with the old checksum: the edit is a corruption
    with pytest.raises(CheckpointError, match="checkpoint is corrupt"):
        load_checkpoint(bad)
    del data["digest"]  # as written before checksums: the mismatch itself is reported
    torch.save(data, bad)
    with pytest.raises(CheckpointError, match="does not match its own model"):
        load_checkpoint(bad)

    (run / "checkpoint.pt").write_bytes(good[:100])  # a resume must not silently restart
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(cfg, run, progress=False)


def test_models_command_lists_presets_with_counts():
    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in models.PRESETS:
        assert name in result.output
    assert "12,007,708" in result.output and "4,936,192" in result.output


def test_augmentation_moves_input_and_targets_with_the_same_element():
    from symaudit import FieldLayout
    from symaudit.groups import Dihedral4
    from symaudit.training.trainer import _augment

    elements = list(Dihedral4(FieldLayout.euler()))
    x = torch.randn(3, 4, 8, 8)
    y = torch.randn(3, 2, 4, 8, 8)  # two unrolled targets
    d4_idx = torch.tensor([0, 1, 6])
    shifts = torch.tensor([[0, 0], [1, 2], [5, 3]])
    xa, ya = _augment(x, y, d4_idx, shifts, elements)
    for i in range(3):
        g = elements[int(d4_idx[i])]
        s = tuple(shifts[i].tolist())
        assert torch.equal(xa[i], torch.roll(g(x[i]), s, dims=(-2, -1)))
        assert torch.equal(ya[i], torch.roll(g(y[i]), s, dims=(-2, -1)))
    assert torch.equal(xa[0], x[0]) and not torch.equal(xa[2], x[2])


def test_models_adapt_to_the_dataset_layout(tmp_path):
    from symaudit import Channel, FieldLayout
    from symaudit.data.store import write_dataset

    layout = FieldLayout(
        [Channel("u", "velocity", "x"), Channel("v", "velocity", "y"), Channel("c")]
    )
    fields = torch.randn(6, 3, 3, 16, 16) + torch.tensor([0.0, 0.0, 2.0]).view(3, 1, 1)
    write_dataset(tmp_path / "vel.h5", fields, [0.0, 0.1, 0.2], layout, {"ic_kind": "test"})
    for name in ("unet-tiny", "gcnn-tiny"):
        cfg = _config(tmp_path / "vel.h5", model=name, epochs=1, batch_size=4)
        train(cfg, tmp_path / name, progress=False)
        model, info = load_checkpoint(tmp_path / name / "checkpoint.pt")
        assert info.layout == layout
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3, 16, 16)
