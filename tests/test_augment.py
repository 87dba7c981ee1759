"""Influence-guided augmentation: training draws exactly the chosen D4 elements, the
selection follows its stated rule on the audit's own influence files, and `symaudit augment`
compares the arms with the same step budget, resumes and redoes only what a change touches."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from symaudit import FieldLayout
from symaudit.cli import app
from symaudit.diagnostics.augmentation import random_subsets, select_elements
from symaudit.groups import Dihedral4
from symaudit.training import TrainConfig, train
from symaudit.training import trainer as trainer_module
from test_transitions import write_smooth_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("augdata")
    write_smooth_dataset(d / "a.h5", n=10, t=6, h=16, seed=3)
    return d


def _config(data_dir: Path, **kw) -> TrainConfig:
    base = dict(model="unet-tiny", data=[str(data_dir)], epochs=1, batch_size=8, lr=1e-2, seed=0)
    return TrainConfig(**{**base, **kw})


def _recorded_inputs(monkeypatch, cfg: TrainConfig, out: Path) -> torch.Tensor:
    """Every input the model saw in training mode (the evaluation passes run in eval mode)."""
    seen: list[torch.Tensor] = []
    build = trainer_module.build_from_config

    def recording(mcfg):
        model = build(mcfg)
        model.register_forward_pre_hook(
            lambda m, args: seen.append(args[0].detach().clone()) if m.training else None
        )
        return model

    monkeypatch.setattr(trainer_module, "build_from_config", recording)
    train(cfg, out, progress=False)
    return torch.cat(seen)


def _which_element(sample: torch.Tensor, states: torch.Tensor, d4) -> set[str]:
    """The D4 elements g with sample == g(x) exactly for some training state x."""
    return {g.name for g in d4 if (g(states) == sample).flatten(1).all(dim=1).any()}


def test_training_is_augmented_by_the_chosen_elements_only(data_dir, tmp_path, monkeypatch):
    chosen = ["r", "rs"]
    cfg = _config(data_dir, augment="d4", augment_elements=chosen)
    inputs = _recorded_inputs(monkeypatch, cfg, tmp_path / "run")
    from symaudit.data.transitions import load_transitions

    data = load_transitions(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    states = data.train[:, :-1].flatten(0, 1)
    d4 = Dihedral4(FieldLayout.euler())
    found = [_which_element(x, states, d4) for x in inputs]
    # every input is the image of a training state under exactly one element (the random
    # fields have no D4 symmetry of their own), and that element is e or a chosen one
    assert all(len(f) == 1 for f in found), found
    used = [f.pop() for f in found]
    assert set(used) == {"e", *chosen}, used
    assert len(used) == (len(states) // 8) * 8  # one epoch of full batches


def test_all_seven_elements_are_exactly_the_full_d4_augmentation(data_dir, tmp_path):
    seven = ["r", "r2", "r3", "s", "rs", "r2s", "r3s"]
    a = train(_config(data_dir, augment="d4"), tmp_path / "a", progress=False)
    b = train(
        _config(data_dir, augment="d4", augment_elements=seven), tmp_path / "b", progress=False
    )
    c = train(
        _config(data_dir, augment="d4", augment_elements=["s"]), tmp_path / "c", progress=False
    )
    flat = [torch.cat([p.detach().flatten() for p in r.model.parameters()]) for r in (a, b, c)]
    assert torch.equal(flat[0], flat[1])
    assert not torch.equal(flat[0], flat[2])  # a subset really changes what is trained on


@pytest.mark.parametrize(
    ("names", "augment", "message"),
    [
        (["r", "q"], "d4", "unknown D4 elements"),
        (["e", "r"], "d4", "identity"),
        (["r", "r"], "d4", "twice"),
        (["r"], "none", "needs a D4 augmentation"),
        ("r", "d4", "list of D4 element names"),
    ],
)
def test_bad_augment_elements_are_refused_by_name(data_dir, names, augment, message):
    with pytest.raises(ValueError, match=message):
        _config(data_dir, augment=augment, augment_elements=names)


def test_subset_runs_keep_old_digests_and_canonical_order(data_dir):
    assert "augment_elements" not in _config(data_dir).to_dict()  # old runs' digests unchanged
    a = _config(data_dir, augment="d4", augment_elements=["s", "r"]).to_dict()
    b = _config(data_dir, augment="d4", augment_elements=["r", "s"]).to_dict()
    assert a == b and a["augment_elements"] == ["r", "s"]


def test_selection_rule_and_random_subsets():
    scores = {
        "e": 1.0,
        "r": 0.2,
        "r2": 0.9,
        "r3": 0.49,
        "s": 0.5,
        "rs": -0.1,
        "r2s": 1.2,
        "r3s": 0.6,
    }
    assert select_elements(scores, "below:0.5") == ["r", "r3", "rs"]  # strict: 0.5 is not below
    assert select_elements(scores, "below:0") == ["rs"]
    # mean of the seven: 3.79 / 7 = 0.541
    assert select_elements(scores, "relative:1") == ["r", "r3", "s", "rs"]
    assert select_elements(scores, "lowest:2") == ["r", "rs"]
    assert select_elements(scores, "lowest:0") == []
    assert select_elements({g: 0.0 for g in scores}, "lowest:2") == ["r", "r2"]  # ties: D4 order
    with pytest.raises(ValueError, match="not finite"):
        select_elements({**scores, "s": float("nan")}, "below:0.5")
    for bad in ("0.5", "below:x", "lowest:2.5", "lowest:8", "above:1"):
        with pytest.raises(ValueError, match="rule"):
            select_elements(scores, bad)
    subs = random_subsets(3, 5, seed=1)
    assert len(subs) == 5 and len({tuple(s) for s in subs}) == 5
    assert all(len(s) == 3 and "e" not in s for s in subs)
    assert subs == random_subsets(3, 5, seed=1) and subs != random_subsets(3, 5, seed=2)
    assert len(random_subsets(7, 4, seed=0)) == 1  # only one 7-subset exists


def test_augment_command_compares_the_arms_and_resumes(tmp_path):
    from symaudit.diagnostics.influence import InfluenceResult
    from symaudit.pipeline.augment import AUGMENT_PRESETS
    from symaudit.training import load_checkpoint

    out = tmp_path / "aug"
    runner = CliRunner()
    r = runner.invoke(app, ["augment", "--preset", "augment-micro", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    preset = AUGMENT_PRESETS["augment-micro"]
    sel = json.loads((out / "selection" / "s0.json").read_text())
    # the rule, recomputed from the un-augmented audit's raw influence files
    meta = json.loads((out / "audits" / "none-s0" / "audit.json").read_text())
    ratios: dict[str, list[float]] = {}
    for piece in meta["pieces"]["d4"]:
        res = InfluenceResult.load(out / "audits" / "none-s0" / piece["influence"])
        diag = res.raw.diagonal(dim1=1, dim2=2)
        for k, g in enumerate(res.elements):
            ratios.setdefault(g, []).extend((diag[k] / diag[0]).tolist())
    assert preset.rule == "lowest:3"
    med = {g: np.median(v) for g, v in ratios.items() if g != "e"}
    expect = [g for g in med if med[g] < sorted(med.values())[3]]  # the three lowest
    assert sel["influence"] == expect and len(expect) == 3
    assert all(len(s) == len(expect) for s in sel["random"])
    # each arm trained with its elements, all with the same number of steps
    steps = set()
    for arm, want in [("none", None), ("influence", expect), ("random0", sel["random"][0])]:
        _, info = load_checkpoint(out / "runs" / f"{arm}-s0" / "checkpoint.pt")
        got = info.config.get("augment_elements")
        assert got == want and info.config["augment"] == ("none" if arm == "none" else "d4")
        steps.add(info.step)
    _, info = load_checkpoint(out / "runs" / "d4-s0" / "checkpoint.pt")
    assert info.config["augment"] == "d4" and info.config.get("augment_elements") is None
    steps.add(info.step)
    assert len(steps) == 1
    # the table's numbers are those of augment.json, and they follow from the per-family errors
    data = json.loads((out / "compare" / "augment.json").read_text())
    page = (out / "compare" / "index.html").read_text()
    for row in data["rows"]:
        fams = row["orbit"]
        rel = {
            g: np.mean([fams[f]["error"][g] / fams[f]["persistence"] for f in fams])
            for g in row["rel_error"]
        }
        assert row["transformed"] == pytest.approx(np.mean([rel[g] for g in rel if g != "e"]))
        assert row["untransformed"] == pytest.approx(rel["e"])
        assert f"{row['transformed']:.4g}" in page
    q = data["summary"]["per_seed"][0]
    t = {r["arm"]: r["transformed"] for r in data["rows"]}
    assert q["delta_vs_random"] == pytest.approx(t["influence"] - t["random0"])
    assert q["beats_random"] == float(t["influence"] < t["random0"])
    gain = q["gain_fraction"]["influence"]
    assert gain == pytest.approx((t["none"] - t["influence"]) / (t["none"] - t["d4"]))
    # rerun: nothing to do (a killed run resumes unit by unit: `symaudit.pipeline.run`)
    again = runner.invoke(
        app, ["augment", "--preset", "augment-micro", "--out", str(out), "--quiet"]
    )
    assert again.exit_code == 0 and "0 units ran" in again.output, again.output


def test_spearman_of_influence_and_error():
    from symaudit.report.augment import _spearman

    rho = {"r": 0.1, "s": 0.3, "rs": 0.2, "r2": -0.1}
    err = {"r": 2.0, "s": 1.0, "rs": 1.5, "r2": 3.0, "e": 0.5}  # e is left out
    assert _spearman(rho, err) == pytest.approx(-1.0)
    assert _spearman(rho, {g: -v for g, v in err.items()}) == pytest.approx(1.0)
    assert _spearman(None, err) is None
