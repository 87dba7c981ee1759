"""Patch-size ablation: the period analysis finds known periods (and the exact period of a
ViT whose position embedding is zero: it is equivariant under whole-patch shifts), and the
`symaudit patch-ablation` page reports what its audits hold."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from symaudit import FieldLayout
from symaudit.cli import app
from symaudit.diagnostics.equivariance import equivariance_error
from symaudit.diagnostics.periods import aligned_contrast, period_scan, shift_of
from symaudit.groups import from_spec
from symaudit.models.vit import ViT
from symaudit.training.loss import SMSE
from test_transitions import write_smooth_dataset


@pytest.mark.parametrize("p", [4, 8, 16])
def test_period_scan_finds_the_period_of_a_noisy_comb_with_a_trend(p):
    rng = np.random.default_rng(p)
    s = np.arange(64)
    pattern = rng.normal(size=p)
    pattern[0] = -3.0  # aligned shifts stand out, as a patch grid would make them
    v = pattern[s % p] + 0.02 * s + 0.1 * rng.normal(size=64)  # slow trend + noise
    scan = period_scan(s, v, 64)
    assert scan["period"] == p, scan
    assert set(scan["F"]) == {2, 4, 8, 16, 32}
    # on a sparse shift set too (the influence shifts of the 4/8/16 ablation)
    sub = [0, 1, *range(2, 33, 2)]
    assert period_scan(sub, v[sub], 64)["period"] == p


def test_period_scan_edge_cases():
    s = np.arange(16)
    exact = np.where(s % 4 == 0, 0.0, 1.0)
    scan = period_scan(s, exact, 16)
    assert scan["period"] == 4 and scan["F"][4] == float("inf") and scan["F"][8] == float("inf")
    assert scan["F"][2] < scan["F"][4]
    flat = period_scan(s, np.ones(16), 16)
    assert set(flat["F"].values()) == {0.0}
    with pytest.raises(ValueError, match="non-finite"):
        period_scan(s, np.full(16, np.nan), 16)
    with pytest.raises(ValueError, match="matching"):
        period_scan(s, np.ones(15), 16)


def test_shift_names_and_aligned_contrast():
    assert [shift_of(n) for n in ("e", "tx3", "ty12")] == [0, 3, 12]
    with pytest.raises(ValueError, match="translation"):
        shift_of("r2")
    c = aligned_contrast([0, 1, 2, 4, 6, 8], [9.0, 1.0, 2.0, 5.0, 3.0, 7.0], 4)
    assert c["aligned"] == 6.0 and c["non_aligned"] == 2.0 and c["difference"] == 4.0


@pytest.mark.parametrize("patch", [4, 8])
def test_a_vit_without_position_embedding_has_exactly_its_patch_period(tmp_path, patch):
    # With P = 0 the ViT commutes with shifts by multiples of p (they permute tokens), so
    # E_{s+p}(x) = E_s(x) exactly in real arithmetic: the error profile is p-periodic and
    # zero at aligned shifts; float32 reorders sums only (rel. ~1e-6 after log).
    torch.manual_seed(0)
    model = ViT(resolution=16, patch=patch, width=12, depth=1, heads=2, mlp_ratio=2)
    with torch.no_grad():
        model.position.zero_()
    fields = write_smooth_dataset(tmp_path / "a.h5", n=3, t=2, h=16, seed=5)
    x, y = fields[:, 0], fields[:, 1]
    loss = SMSE(torch.ones(4, dtype=torch.float64))
    group = from_spec("shift-x", FieldLayout.euler(), resolution=16)
    eq = equivariance_error(model, (x, y), group, loss)
    shifts = [shift_of(n) for n in eq.elements]
    profile = np.log(eq.error.numpy() / eq.error[eq.index("e")].numpy()).mean(axis=1)
    aligned = [v for s, v in zip(shifts, profile, strict=True) if s % patch == 0]
    assert np.abs(aligned).max() < 1e-5
    assert np.abs(profile).max() > 1e-4  # non-aligned shifts cut patches: far above round-off
    assert period_scan(shifts, profile, 16)["period"] == patch


def test_patch_ablation_command_reports_its_audits(tmp_path):
    out = tmp_path / "pa"
    r = CliRunner().invoke(
        app, ["patch-ablation", "--preset", "patches-micro", "--out", str(out), "--quiet"]
    )
    assert r.exit_code == 0, r.output
    data = json.loads((out / "periods" / "periods.json").read_text())
    page = (out / "periods" / "index.html").read_text()
    assert [m["natural_period"] for m in data["models"]] == [2, 4, 8]
    for m in data["models"]:
        meta = json.loads((out / "audits" / m["name"] / "audit.json").read_text())
        assert meta["model"]["kwargs"]["patch"] == m["natural_period"]
        for spec, g in m["groups"].items():
            assert len(g["shifts"]) == 16 and len(g["error_profile"]) == 16
            # the recorded profile is the audit's own errors, re-derived here
            from symaudit.diagnostics.equivariance import EquivarianceResult

            logs = []
            for piece in meta["pieces"][spec]:
                eq = EquivarianceResult.load(out / "audits" / m["name"] / piece["equivariance"])
                logs.append(np.log(eq.error.numpy() / eq.error[eq.index("e")].numpy()))
            np.testing.assert_allclose(
                g["error_profile"], np.concatenate(logs, axis=1).mean(axis=1), rtol=1e-12
            )
            assert g["error_period"] == period_scan(g["shifts"], g["error_profile"], 16)["period"]
            assert f"<b>{g['error_period']}</b>" in page
    again = CliRunner().invoke(
        app, ["patch-ablation", "--preset", "patches-micro", "--out", str(out), "--quiet"]
    )
    assert "0 units ran" in again.output, again.output
