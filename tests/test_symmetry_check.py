"""The data generator's own symmetry (`symaudit check-data`): the paired solver check and the
statistical check must tell a D4-breaking generator from ours."""

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from symaudit import SMSE, FieldLayout, groups
from symaudit.data.check_files import DEFAULT_TOLERANCE, check_files, paired_check
from symaudit.data.symmetry_check import (
    SolverStep,
    _bonferroni_threshold,
    distribution_asymmetry,
)
from symaudit.physics import evolve
from symaudit.physics import initial_conditions as ics
from symaudit.physics._flux import LIMITERS
from symaudit.physics.euler import _SWAP, _face_fluxes, conservative_to_primitive

LAYOUT = FieldLayout.euler()
AXIS_SWAPPING = {"r", "r3", "rs", "r3s"}  # D4 elements that exchange the x and y axes


class SplitStep(nn.Module):
    """A dimensionally split (Lie: full x sweep, then full y sweep) first-order-in-time MUSCL-
    HLLC scheme: the textbook D4-breaker. Each 1D sweep is mirror-symmetric, so the scheme
    commutes exactly with the elements that keep the axes (e, r2, s, r2s) and breaks the ones
    that exchange them (x-then-y becomes y-then-x)."""

    def __init__(self, dt: float, substeps: int) -> None:
        super().__init__()
        self.tau, self.n = dt / substeps, substeps

    def _sweep(self, u: torch.Tensor, dim: int) -> torch.Tensor:
        prim = conservative_to_primitive(u)
        n = u.shape[dim]
        if dim == -1:
            f = _face_fluxes(prim, -1, 1.4, LIMITERS["mc"])
            div = f[..., 1:] - f[..., :n]
        else:
            f = _face_fluxes(prim[:, _SWAP], -2, 1.4, LIMITERS["mc"])[:, _SWAP]
            div = f[..., 1:, :] - f[..., :n, :]
        return u - self.tau * n * div  # dx = 1/n on the unit square

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n):
            x = self._sweep(self._sweep(x, -1), -2)
        return x


@pytest.fixture(scope="module")
def transitions():
    x0 = ics.sample("ce-rp", 3, 16, seed=3).state
    x1 = evolve(x0, [0.0, 0.02])[:, -1]
    rms = x1.pow(2).mean((0, 2, 3)).sqrt()
    rms[1:3] = rms[1:3].pow(2).mean().sqrt()
    return (x0, x1), SMSE(rms)


def test_our_solver_passes_and_a_split_solver_breaks_exactly_the_axis_swaps(transitions):
    batch, loss = transitions
    d4 = groups.Dihedral4(LAYOUT)
    # ours: bit-mirrored fluxes make the defect exactly 0.0 (the stated tolerance is 1e-16)
    _, ours = paired_check(
        SolverStep(0.02), batch, d4 * groups.Translations(LAYOUT, "xy", [0, 5], size=16), loss
    )
    assert all(r["defect"] == 0.0 and not r["broken"] for r in ours.values())
    # the split scheme: 4 substeps of dt/4 (CFL ~0.3 at 16^2 for these states)
    _, split = paired_check(SplitStep(0.02, 4), batch, d4, loss)
    broken = {g for g, r in split.items() if r["broken"]}
    assert broken == AXIS_SWAPPING
    assert min(split[g]["defect"] for g in AXIS_SWAPPING) > 1e4 * DEFAULT_TOLERANCE
    assert all(split[g]["defect"] < 1e-26 for g in ("e", "r2", "s", "r2s"))


def test_boosts_are_the_solvers_floor_and_shrink_with_speed(transitions):
    batch, loss = transitions
    # c dt N = c * 0.02 * 16 must be whole: c = 1/0.32 = 3.125 is the smallest boost
    g = groups.GalileanBoost(LAYOUT, (3.125, 0.0), 0.02, multiples=[0, 1, 2])
    _, rows = paired_check(SolverStep(0.02), batch, g, loss)
    d1, d2 = rows["boost(3.125,0)"]["defect"], rows["boost(6.25,0)"]["defect"]
    assert rows["e"]["defect"] == 0.0 and 0 < d1 < d2


def test_t_quantile_threshold():
    # two-sided Student-t quantiles (tables): t_{0.975}(10) = 2.2281, t_{0.995}(4) = 4.6041
    assert _bonferroni_threshold(0.05, 1, 10) == pytest.approx(2.2281, abs=2e-4)
    assert _bonferroni_threshold(0.05, 5, 4) == pytest.approx(4.6041, abs=2e-4)


def _ensemble(n: int, seed: int) -> torch.Tensor:
    x0 = ics.sample("ce-rp", n, 16, seed=seed).state
    return evolve(x0, [0.0, 0.03])  # (n, 2, 4, 16, 16)


def test_statistics_flag_an_anisotropic_ensemble_but_not_ours():
    traj = _ensemble(24, 7)
    d4 = groups.Dihedral4(LAYOUT)
    ours = distribution_asymmetry(traj, d4)
    assert not any(ours.flagged().values())
    # a biased generator: smooth every snapshot along x only (an x-diffusive scheme)
    biased = (traj + torch.roll(traj, 1, -1) + torch.roll(traj, -1, -1)) / 3
    res = distribution_asymmetry(biased, d4)
    flags = res.flagged()
    assert {g for g, f in flags.items() if f} >= {"r", "r3"}
    assert not flags["e"] and not flags["r2"]  # r2 keeps the axes: no anisotropy to see
    # the identity is exactly invariant: z = 0, relative asymmetry 0
    assert res.z[0].abs().max() == 0 and res.relative[0].max() == 0


def test_noise_floor_is_the_standard_error():
    traj = _ensemble(6, 9)
    g = groups.Dihedral4(LAYOUT).subset(["r"])
    res = distribution_asymmetry(traj, g)
    from symaudit.data.symmetry_check import state_features

    d = state_features(g["r"](traj)) - state_features(traj)
    expected = d.std(0) / math.sqrt(6)
    torch.testing.assert_close(res.noise[0], expected, rtol=1e-12, atol=0)


def test_statistical_check_refuses_boosts():
    traj = _ensemble(4, 1)
    with pytest.raises(ValueError, match="boost"):
        distribution_asymmetry(traj, groups.GalileanBoost(LAYOUT, (1.0, 0.0), 0.0625))


@pytest.fixture(scope="module")
def micro_file(tmp_path_factory):
    from symaudit.data.generate import GenerationSettings, generate

    out = tmp_path_factory.mktemp("check") / "ce-rp.h5"
    generate(GenerationSettings("ce-rp", 4, 16, snapshots=3, t_final=0.125), out)
    return out


def test_check_files_and_page_numbers(micro_file, tmp_path):
    from symaudit.report.data_check import build_check_page, check_rows

    # dt = 0.0625 at N = 16: c = 1 moves the state by one cell
    res = check_files([micro_file], groups=["d4"], boosts=["boost:1,0"], trajectories=4)
    f = res["files"][0]
    rows = f["paired"]["groups"]
    assert all(r["defect"] == 0.0 for r in rows["d4"].values())
    assert rows["boost:1,0"]["boost(1,0)"]["broken"]
    # stored float32 vs a float64 re-run: storage round-off only, (2^-24)^2 ~ 4e-15 in SMSE
    assert f["paired"]["reproduction_error"] < 1e-13
    build_check_page(tmp_path, res)
    back = json.loads((tmp_path / "check.json").read_text())
    paired, _ = check_rows(back)
    table = {(r["group"], r["element"]): r["defect"] for r in paired}
    assert table[("boost:1,0", "boost(1,0)")] == rows["boost:1,0"]["boost(1,0)"]["defect"]
    html = (tmp_path / "index.html").read_text()
    assert f"{rows['boost:1,0']['boost(1,0)']['defect']:.3g}" in html


def test_cli_check_data(micro_file, tmp_path):
    from symaudit.cli import app

    def run(*extra: str):
        args = ["check-data", str(micro_file), "--out", str(tmp_path), "--trajectories", "3"]
        return CliRunner().invoke(app, [*args, *extra])

    r = run("--group", "d4")
    assert r.exit_code == 0, r.output
    assert "generator breaks: none" in r.output
    # c dt N = 0.3 * 0.0625 * 16 = 0.3 cells: refused in one line, naming the problem
    r = run("--boost", "boost:0.3,0")
    assert r.exit_code == 2 and "whole number of cells" in r.output


def test_model_errors_next_to_the_floor(micro_study, tmp_path):
    from symaudit.diagnostics.audit import load_audit
    from symaudit.report.data_check import build_check_page, floor_rows

    res = check_files([micro_study / "data" / "test" / "ce-rp.h5"], groups=["d4"], trajectories=2)
    rec = load_audit(micro_study / "audits" / "unet-tiny-s0")
    rows = floor_rows(res, [rec])
    assert {r["element"] for r in rows} == set(groups.Dihedral4(LAYOUT).names)
    k = [p["family"] for p in rec.meta["pieces"]["d4"]].index("ce-rp")
    eq = rec.equivariance["d4"][k]
    for r in (r for r in rows if r["group"] == "d4"):  # shift groups hold "e" too
        i = eq.index(r["element"])
        assert r["model E_g"] == float(eq.error[i].median())
        assert r["generator D_g (floor)"] == 0.0
    build_check_page(tmp_path, res, [rec])
    back = json.loads((tmp_path / "check.json").read_text())
    assert back["model_vs_floor"] == rows
    assert f"{rows[1]['model E_g']:.3g}" in (tmp_path / "index.html").read_text()


def test_floor_is_reexpressed_in_the_models_units():
    from types import SimpleNamespace

    from symaudit.diagnostics.equivariance import EquivarianceResult
    from symaudit.report.data_check import floor_rows

    # per-channel msd (1, 4, 4, 9) against a model rms (1, 2, 2, 3): SMSE = mean(1, 1, 1, 1)
    result = {
        "files": [
            {
                "family": "f",
                "paired": {"groups": {"d4": {"r": {"defect_msd": [[1.0, 4.0, 4.0, 9.0]]}}}},
            }
        ]
    }
    eq = EquivarianceResult(
        ["e", "r"],
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        settings={"channel_rms": [1.0, 2.0, 2.0, 3.0], "num_states": 1},
    )
    rec = SimpleNamespace(
        model="m", equivariance={"d4": [eq]}, meta={"pieces": {"d4": [{"family": "f"}]}}
    )
    (row,) = floor_rows(result, [rec])
    assert row["generator D_g (floor)"] == 1.0 and row["element"] == "r"
