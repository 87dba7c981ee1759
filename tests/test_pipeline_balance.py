"""Per-family loss balance (`TrainConfig.balance`): the weights equalise the families'
persistence errors as defined, and the trainer really minimises the weighted loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from symaudit.data.store import write_dataset
from symaudit.data.transitions import load_transitions
from symaudit.fields import FieldLayout
from symaudit.models import build_from_config
from symaudit.training import SMSE, TrainConfig, family_weights, train
from symaudit.training.trainer import _resolve_model_config
from test_transitions import write_smooth_dataset


@pytest.fixture(scope="module")
def two_families(tmp_path_factory) -> Path:
    """A slow family (1 cell per snapshot) and a fast, 10x larger one (3 cells)."""
    d = tmp_path_factory.mktemp("fam")
    write_smooth_dataset(d / "a.h5", n=5, t=5, h=16, seed=0, speed=1)
    big = write_smooth_dataset(d / "tmp.h5", n=5, t=5, h=16, seed=1, speed=3) * 10
    (d / "tmp.h5").unlink()
    times = torch.arange(5) * 0.05
    write_dataset(d / "b.h5", big, times, FieldLayout.euler(), {"ic_kind": "test"})
    return d


def _persistence(data, loss) -> list[float]:
    out, start = [], 0
    for train_ids, _ in data.split.values():
        traj = data.train[start : start + len(train_ids)]
        start += len(train_ids)
        out.append(float(loss.per_sample(traj[:, :-1], traj[:, 1:]).double().mean()))
    return out


def test_weights_equalise_weighted_persistence_and_have_mean_one(two_families):
    data = load_transitions(two_families, val_fraction=0.2, seed=0)
    loss = SMSE(data.channel_rms)
    p = _persistence(data, loss)
    assert p[1] > 50 * p[0]  # the big family owns the plain loss
    counts = [len(tr) for tr, _ in data.split.values()]
    for beta in (0.5, 1.0):
        w = list(family_weights(data, loss, beta).values())
        # w_f ∝ P_f^-β, normalised to mean 1 over training samples
        assert w[0] / w[1] == pytest.approx((p[1] / p[0]) ** beta, rel=1e-9)
        assert sum(wi * n for wi, n in zip(w, counts, strict=True)) / sum(counts) == pytest.approx(
            1.0, rel=1e-12
        )
    w1 = list(family_weights(data, loss, 1.0).values())
    assert w1[0] * p[0] == pytest.approx(w1[1] * p[1], rel=1e-9)
    assert set(family_weights(data, loss, 0.0).values()) == {1.0}


def test_trainer_minimises_the_weighted_loss(two_families, tmp_path):
    # lr = 1e-30: the model stays at its initialisation, so the epoch's mean training loss must be
    # the weighted mean of the initial model's per-sample SMSE over all 32 training samples.
    cfg = TrainConfig(
        model="unet-tiny",
        data=[str(two_families)],
        epochs=1,
        batch_size=4,
        lr=1e-30,  # steps that leave float32 weights unchanged (lr 0 is refused)
        val_fraction=0.2,
        balance=1.0,
    )
    res = train(cfg, tmp_path / "run", progress=False)
    data = load_transitions(two_families, val_fraction=0.2, seed=0)
    loss = SMSE(data.channel_rms)
    torch.manual_seed(cfg.seed)
    model = build_from_config(_resolve_model_config(cfg, data))
    w = family_weights(data, loss, 1.0)
    with torch.no_grad():
        weighted, plain, start = 0.0, 0.0, 0
        for path, (train_ids, _) in data.split.items():
            traj = data.train[start : start + len(train_ids)]
            start += len(train_ids)
            e = loss.per_sample(model(traj[:, :-1].flatten(0, 1)), traj[:, 1:].flatten(0, 1))
            weighted += w[path] * float(e.double().sum())
            plain += float(e.double().sum())
    n = data.num_transitions()
    assert n == 32
    got = res.history[0]["train_loss"]
    assert got == pytest.approx(weighted / n, rel=1e-5)
    assert abs(plain / n - weighted / n) > 0.1 * abs(weighted / n)  # the weights matter here
    assert torch.load(res.checkpoint, weights_only=False)["family_weights"] == w


def test_bad_balance_and_steady_family_are_refused(tmp_path):
    with pytest.raises(ValueError, match="balance"):
        TrainConfig(data=["x"], balance=-1.0)
    fields = torch.ones(2, 3, 4, 8, 8)
    write_dataset(
        tmp_path / "still.h5", fields, [0.0, 0.1, 0.2], FieldLayout.euler(), {"ic_kind": "test"}
    )
    data = load_transitions(tmp_path / "still.h5", val_fraction=0.0)
    with pytest.raises(ValueError, match="persistence error"):
        family_weights(data, SMSE(data.channel_rms), 0.5)


def test_train_cli_passes_balance(two_families, tmp_path):
    from typer.testing import CliRunner

    from symaudit.cli import app

    base = ["train", "--model", "unet-tiny", "--data", str(two_families), "--epochs", "1"]
    base += ["--batch-size", "8", "--lr", "1e-30", "--quiet"]  # weights stay as initialised
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "r"), "--balance", "0.5"])
    assert res.exit_code == 0, res.output
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert ckpt["config"]["balance"] == 0.5
    data = load_transitions(two_families, val_fraction=0.1, seed=0)
    assert ckpt["family_weights"] == family_weights(data, SMSE(data.channel_rms), 0.5)
    bad = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b"), "--balance", "-1"])
    assert bad.exit_code == 2 and "balance" in bad.output
