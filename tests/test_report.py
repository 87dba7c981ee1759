"""The report on synthetic audits with known numbers: the findings F1–F8 follow the numbers
(both ways), the figures and HTML are written, and (if Debian's chromium is installed) the
page renders in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from symaudit._io import atomic_write_json
from symaudit.diagnostics.audit import AUDIT_FORMAT
from symaudit.diagnostics.equivariance import EquivarianceResult
from symaudit.diagnostics.influence import InfluenceResult
from symaudit.diagnostics.shifts import influence_shift_set
from symaudit.report import build_report, collect, findings
from symaudit.report.findings import readings

D4 = ["e", "r", "r2", "r3", "s", "rs", "r2s", "r3s"]
RES = 16
SHIFTS = list(range(RES))  # errors: every shift
# influence: the rule's set for the fixture's periods (UNet 4, ViT patch 2)
INF = influence_shift_set([4, 2], RES)
N = 6  # states per mini-batch (one family each)
KWARGS = {"unet": {"mults": [1, 1, 1]}, "vit": {"patch": 2}, "gcnn": {}}


def _report(reports_cols: int, rtol: float) -> dict:
    return {
        "rtol": rtol,
        "max_iter": 100,
        "residuals": [rtol / 2] * reports_cols,
        "iterations": [7] * reports_cols,
        "converged": [True] * reports_cols,
        "products": 7 * reports_cols,
        "column_products": [7] * reports_cols,
        "restarts": 0,
        "seconds": 99.0,  # a block's time, repeated per column: the report must not sum it
        "history": [],
    }


def _names(kind: str, shifts: list[int]) -> list[str]:
    return D4 if kind == "d4" else [f"{kind[-1]}{s}" if s else "e" for s in shifts]


def _influence(names: list[str], diag: np.ndarray, damping: float, seconds: float):
    """Raw M^g with the given diagonal and fixed off-diagonal entries (unit norms)."""
    g, n = diag.shape
    gen = torch.Generator().manual_seed(1)
    # the same for every element (as for an exactly equivariant model)
    raw = (0.6 * torch.rand(n, n, generator=gen, dtype=torch.float64) - 0.3).repeat(g, 1, 1)
    raw[:, range(n), range(n)] = torch.as_tensor(diag, dtype=torch.float64)
    return InfluenceResult(
        names,
        raw,
        torch.ones(n, dtype=torch.float64),
        torch.ones(g, n, dtype=torch.float64),
        damping,
        reports={"test": _report(n, 5e-3)},
        timings={"solve": seconds},
        settings={"num_params": 1234, "audit": {"sweep_seconds": 3 * seconds}},
        spectrum={"top_eigenvalue": 1.0},
    )


def _gspec(kind: str) -> dict:
    if kind == "d4":
        return {"kind": "d4", "text": kind}
    return {"kind": "translations", "axis": kind[-1], "shifts": SHIFTS, "text": kind}


def _audit(
    path: Path, arch: str, seed: int, error: dict, defect: dict, diag: dict, fams: list[str]
) -> Path:
    """Write an audit directory with one mini-batch of N states per family (columns
    f*N .. (f+1)*N-1 of every array are family f's). Per group kind: E_g and D_g at every
    shift `(|G|, N*F)`, and the influence diagonal at the ``INF`` shifts, one array per
    damping (a list) or one array for two dampings alike."""
    pieces = {}
    for kind in ("d4", "shift-x", "shift-y"):
        names, inf_names = _names(kind, SHIFTS), _names(kind, INF)
        diags = diag[kind] if isinstance(diag[kind], list) else [diag[kind]] * 2
        pieces[kind] = []
        for f, fam in enumerate(fams):
            cols = slice(f * N, (f + 1) * N)
            where = Path(kind) / f"{fam}-batch0"
            EquivarianceResult(
                names,
                torch.as_tensor(error[kind][:, cols], dtype=torch.float64),
                torch.as_tensor(defect[kind][:, cols], dtype=torch.float64),
                # what Group.describe() stores: the report dispatches on the spec's kind
                group={"name": kind, "spec": _gspec(kind)},
                settings={"num_states": N, "resolution": [RES, RES]},
            ).save(path / where / "equivariance.pt")
            for j, (name, lam) in enumerate((("influence.pt", 1e-3), ("sweep-0.pt", 1e-2))):
                res = _influence(inf_names, diags[j][:, cols], lam, 1.0 + f + j)
                res.save(path / where / name)
            pieces[kind].append(
                {
                    "family": fam,
                    "batch": 0,
                    "equivariance": str(where / "equivariance.pt"),
                    "influence": str(where / "influence.pt"),
                    "sweep": [str(where / "sweep-0.pt")],
                    "influence_elements": inf_names,
                    "time_index": 0,
                    "time": 0.0,
                }
            )
    preset = {"unet": "unet-tiny", "vit": "vit-tiny", "gcnn": "gcnn-tiny"}[arch]
    atomic_write_json(
        path / "audit.json",
        {
            "format": AUDIT_FORMAT,
            "complete": True,
            "model": {"preset": preset, "architecture": arch, "kwargs": KWARGS[arch]},
            "run": {"seed": seed},
            "settings": {"per_family": N, "damping": "auto:1e-3", "damping_sweep": ["auto:1e-2"]},
            "families": fams,
            "pieces": pieces,
        },
    )
    e = float(np.mean(error["d4"][0]))
    atomic_write_json(
        path / "test_errors.json", {"all": {"one_step": e, "persistence_one_step": 2 * e}}
    )
    return path


def _rows(values: list[float], n: int) -> np.ndarray:
    """`(len(values), n)`: one row per element, constant along states."""
    return np.repeat(np.asarray(values, dtype=float)[:, None], n, axis=1)


def _study(
    tmp: Path,
    *,
    vit_better: bool,
    families: dict[str, float] | None = None,
    vit_spike: np.ndarray | None = None,
    vit_d4_influence: list | None = None,
    seed: int = 0,
) -> list[Path]:
    """UNet, ViT and G-CNN audits (of model seed ``seed``) built so that F1-F8 hold
    (``vit_better``: F1, F2), with
    ``families`` {name: error scale} (one mini-batch each); ``vit_spike`` `(|shifts|, N*F)`
    replaces the ViT's multiplier of its shift errors; ``vit_d4_influence`` its D4 influence
    diagonal per damping."""
    fams = families or {"ce-rp": 1.0}
    n = N * len(fams)
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, size=n) * np.repeat(list(fams.values()), N)
    s = np.asarray(INF)
    dirs = []
    # UNet: error 1x untransformed, 1.2x transformed; shift errors flat but for a bump at 4
    # (where its influence resonates: shifts aligned with its period 4); D4 influence ~0.5
    bump = np.where(np.asarray(SHIFTS) == 4, 1.1, 1.0)[:, None]
    unet_inf = np.where(s == 0, 1.0, np.where(s % 4 == 0, 0.9, 0.5))
    unet_d4 = np.vstack([np.ones(n)] + [rng.uniform(0.2, 0.8, n) for _ in range(7)])
    f = 0.5 if vit_better else 2.0
    dirs.append(
        _audit(
            tmp / "unet",
            "unet",
            seed,
            {
                "d4": np.vstack([base] + [1.2 * base] * 7),
                "shift-x": bump * base,
                "shift-y": bump * base,
            },
            {
                "d4": np.full((8, n), 0.1),
                "shift-x": np.full((RES, n), 0.01),
                "shift-y": np.full((RES, n), 0.01),
            },
            {"d4": unet_d4, "shift-x": _rows(unet_inf, n), "shift-y": _rows(1.2 * unet_inf, n)},
            list(fams),
        )
    )
    # ViT: 0.5x (or 2x) untransformed, 1.25x transformed; half the UNet's shift error with a
    # one-state spike at 5 and a bump at 7 that every state shares (no influence resonance
    # there); D4 influence ~0; shift influence decaying from s = 0
    if vit_spike is None:
        vit_spike = np.full((RES, n), 0.5)
        vit_spike[5, ::N] = 2.5  # the first state of every family
        vit_spike[7] = 0.6
    vit_inf = np.where(s == 0, 1.0, 0.3 / (1 + s))
    if vit_d4_influence is None:
        vit_d4_influence = np.vstack([np.ones(n)] + [rng.uniform(-0.01, 0.01, n) for _ in range(7)])
    dirs.append(
        _audit(
            tmp / "vit",
            "vit",
            seed,
            {
                "d4": np.vstack([f * base] + [1.25 * base] * 7),
                "shift-x": vit_spike * base,
                "shift-y": vit_spike * base,
            },
            {
                "d4": np.full((8, n), 0.2),
                "shift-x": np.full((RES, n), 0.02),
                "shift-y": np.full((RES, n), 0.02),
            },
            {
                "d4": vit_d4_influence,
                "shift-x": _rows(vit_inf, n),
                "shift-y": _rows(1.2 * vit_inf, n),
            },
            list(fams),
        )
    )
    # G-CNN: exactly equivariant: same error for every g, zero defect, constant influence
    flat = np.ones((RES, 1))
    dirs.append(
        _audit(
            tmp / "gcnn",
            "gcnn",
            seed,
            {"d4": np.vstack([base] * 8), "shift-x": flat * base, "shift-y": flat * base},
            {"d4": np.zeros((8, n)), "shift-x": np.zeros((RES, n)), "shift-y": np.zeros((RES, n))},
            {
                "d4": np.ones((8, n)),
                "shift-x": np.ones((len(INF), n)),
                "shift-y": np.ones((len(INF), n)),
            },
            list(fams),
        )
    )
    return dirs


def _status(dirs: list[Path]) -> dict[str, str]:
    return {f["id"]: f["status"] for f in findings(collect(dirs))}


ALL = ("F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8")


def test_findings_follow_the_numbers_and_the_report_shows_them(tmp_path):
    dirs = _study(tmp_path / "a", vit_better=True)
    html = build_report(dirs, tmp_path / "ra")
    assert _status(dirs) == dict.fromkeys(ALL, "reproduced")
    text = html.read_text()
    assert "not reproduced" not in text and text.count("<td><b>reproduced</b></td>") == 8
    for fig in sorted((tmp_path / "ra").glob("fig*.svg")):
        assert f"src='{fig.name}'" in text
    assert len(list((tmp_path / "ra").glob("fig*.png"))) == 9
    rep = json.loads((tmp_path / "ra" / "report.json").read_text())
    # influence findings hold at both dampings (the same diagonals)
    for f in rep["findings"]:
        if f["id"] in ("F3", "F5", "F6", "F7", "F8"):
            assert f["dampings"].startswith("reproduced at every λ"), f
        else:
            assert f["dampings"] == "independent of λ"
    # exact pooled medians: UNet untransformed median = median(base)
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, size=N)
    assert rep["models"]["unet-tiny"]["d4"]["median_untransformed_error"] == pytest.approx(
        float(np.median(base)), rel=1e-12
    )
    assert rep["models"]["vit-tiny"]["d4"]["median_error"][0] == pytest.approx(
        0.5 * float(np.median(base)), rel=1e-12
    )
    d4 = EquivarianceResult.load(dirs[0] / "d4" / "ce-rp-batch0" / "equivariance.pt")
    drawn = rep["figures"]["fig2_d4_error"]["ce-rp"]["unet-tiny"]["median"]
    assert drawn == pytest.approx(np.median(d4.error.numpy(), axis=1), rel=1e-12)
    # Figs 6-7 draw the influence at the rule's shifts, diagonal and off-diagonal
    inf = InfluenceResult.load(dirs[1] / "shift-y" / "ce-rp-batch0" / "influence.pt")
    drawn = rep["figures"]["fig7_shift-y_influence"]
    frob = inf.frobenius.numpy()
    assert drawn["frobenius"]["vit-tiny"]["median"] == pytest.approx(
        np.median(np.diagonal(frob, axis1=1, axis2=2), axis=1), rel=1e-12
    )
    assert drawn["offdiag"]["vit-tiny"]["median"] == pytest.approx(
        np.median(frob[:, ~np.eye(N, dtype=bool)], axis=1), rel=1e-12
    )
    assert rep["models"]["vit-tiny"]["shift-y"]["influence_shifts"] == INF
    assert rep["models"]["vit-tiny"]["shift-y"]["shifts"] == SHIFTS
    assert rep["models"]["unet-tiny"]["period"] == 4 and rep["models"]["vit-tiny"]["period"] == 2


def test_cg_time_is_the_wall_time_of_the_solves(tmp_path):
    """Per-column solver reports each carry their block's time (99 s here); the report's CG
    time is the solves' own wall time (timings["solve"]) summed over batches and dampings."""
    dirs = _study(tmp_path / "t", vit_better=True, families={"ce-rp": 1.0, "ce-crp": 1.0})
    html = build_report(dirs, tmp_path / "rt")
    rep = json.loads((tmp_path / "rt" / "report.json").read_text())
    # per kind: family f, damping j took 1 + f + j s -> (1 + 2) + (2 + 3) = 8 s; 3 kinds
    for preset in ("unet-tiny", "vit-tiny", "gcnn-tiny"):
        rows = rep["solver"][preset]
        assert len(rows) == 3 * 2 * 2 and sorted({r["seconds"] for r in rows}) == [1, 2, 3]
        assert rep["models"][preset]["audit_seconds"]["0"] == {
            "solve_seconds": 24.0,
            "influence_seconds": 3 * (1 + 2) * 3,
        }
    assert "<td class='num'>24.0</td><td class='num'>27.0</td>" in html.read_text()


def test_error_figures_draw_one_panel_per_family_with_that_familys_states(tmp_path):
    # batch order is not alphabetical, and CE-RPUI's errors are 1000x CE-RP's (as in the demo)
    scales = {"ce-rpui": 1000.0, "ce-rp": 1.0}
    dirs = _study(tmp_path / "f", vit_better=True, families=scales)
    build_report(dirs, tmp_path / "rf")
    figs = json.loads((tmp_path / "rf" / "report.json").read_text())["figures"]
    for d in dirs:
        preset = json.loads((d / "audit.json").read_text())["model"]["preset"]
        for f in scales:
            d4 = EquivarianceResult.load(d / "d4" / f"{f}-batch0" / "equivariance.pt").error
            d4 = d4.numpy()
            # Fig. 1: untransformed and D4-averaged medians of this family's states only
            drawn = figs["fig1_test_error"][f][preset]
            assert drawn["untransformed"] == pytest.approx(np.median(d4[0]), rel=1e-12)
            assert drawn["d4_averaged"] == pytest.approx(np.median(d4.mean(0)), rel=1e-12)
            # Fig. 2: per D4 element
            drawn = figs["fig2_d4_error"][f][preset]["median"]
            assert drawn == pytest.approx(np.median(d4, axis=1), rel=1e-12)
            # Figs 4-5: median marker and 10-90 % whisker at every shift
            for fig_id, kind in (
                ("fig4_shift-x_error", "shift-x"),
                ("fig5_shift-y_error", "shift-y"),
            ):
                err = EquivarianceResult.load(d / kind / f"{f}-batch0" / "equivariance.pt")
                err = err.error.numpy()
                drawn = figs[fig_id][f][preset]
                assert len(drawn["median"]) == RES
                assert drawn["median"] == pytest.approx(np.median(err, axis=1), rel=1e-12)
                assert drawn["q10"] == pytest.approx(np.quantile(err, 0.1, axis=1), rel=1e-12)
                assert drawn["q90"] == pytest.approx(np.quantile(err, 0.9, axis=1), rel=1e-12)
        # the split is real: every CE-RP panel lies far below every CE-RPUI panel
        med = figs["fig2_d4_error"]
        assert max(med["ce-rp"][preset]["median"]) < 0.01 * min(med["ce-rpui"][preset]["median"])
    for fig_id in ("fig1_test_error", "fig2_d4_error", "fig4_shift-x_error"):
        assert sorted(figs[fig_id]) == sorted(scales), fig_id
    # the findings keep their per-family verdicts (the scales cancel in per-family ratios)
    assert _status(dirs) == dict.fromkeys(ALL, "reproduced")


def test_a_finding_that_fails_is_reported_as_not_reproduced(tmp_path):
    status = _status(_study(tmp_path / "b", vit_better=False))
    assert status["F1"] == "not reproduced" and status["F2"] == "not reproduced"
    assert status["F5"] == "reproduced"


def test_a_verdict_that_depends_on_the_damping_says_so(tmp_path):
    """F3 holds at the first damping (ViT D4 influence ~0) and fails at the second (there
    the ViT's is as large and variable as the UNet's): "some λ"."""
    rng = np.random.default_rng(5)
    small = np.vstack([np.ones(N)] + [rng.uniform(-0.01, 0.01, N) for _ in range(7)])
    large = np.vstack([np.ones(N)] + [rng.uniform(-0.95, 0.95, N) for _ in range(7)])
    dirs = _study(tmp_path / "l", vit_better=True, vit_d4_influence=[small, large])
    f3 = next(f for f in findings(collect(dirs)) if f["id"] == "F3")
    assert f3["status"] == "reproduced"
    assert f3["dampings"] == (
        "reproduced at some λ: auto:1e-3: reproduced; auto:1e-2: not reproduced"
    )


def test_each_verdict_is_also_judged_seed_by_seed(tmp_path):
    """Two seeds pooled: F1 and F2 hold in seed 0's audits alone and fail in seed 1's, F3-F8
    hold in both. The seed column is each seed's own report's verdict; one seed says so."""
    s0 = _study(tmp_path / "s0", vit_better=True, seed=0)
    s1 = _study(tmp_path / "s1", vit_better=False, seed=1)
    pooled = findings(collect(s0 + s1))
    alone = {0: _status(s0), 1: _status(s1)}
    assert alone[0] == dict.fromkeys(ALL, "reproduced")
    assert alone[1]["F1"] == alone[1]["F2"] == "not reproduced"
    for f in pooled:
        listed = "; ".join(f"seed {k}: {alone[k][f['id']]}" for k in (0, 1))
        held = all(alone[k][f["id"]] == "reproduced" for k in (0, 1))
        word = "every seed" if held else "some seeds"
        assert f["seeds"] == f"reproduced in {word}: {listed}", f
    assert {f["id"] for f in pooled if "some seeds" in f["seeds"]} == {"F1", "F2"}
    assert all(f["seeds"] == "one seed (0)" for f in findings(collect(s0)))
    html = build_report(s0 + s1, tmp_path / "r").read_text()
    assert "<th>seed robustness</th>" in html and html.count("<td>reproduced in every seed:") == 6


def test_f2_needs_the_advantage_to_vanish_not_just_shrink(tmp_path):
    dirs = _study(tmp_path / "v", vit_better=True)
    # the ViT keeps 30 % of its advantage on transformed inputs (UNet 1.2 base): F2 fails
    for fam_dir in (dirs[1] / "d4").iterdir():
        eq = EquivarianceResult.load(fam_dir / "equivariance.pt")
        eq.error[1:] = 0.7 * 1.2 * eq.error[0] / 0.5
        eq.save(fam_dir / "equivariance.pt")
    status = _status(dirs)
    assert status["F1"] == "reproduced" and status["F2"] == "not reproduced"


def test_f6_f7_fail_when_the_architectures_swap(tmp_path):
    """Swapping the UNet's and the ViT's audits breaks F6 (the UNet's influence must be the
    larger and periodic one); swapping x and y breaks F7."""
    dirs = _study(tmp_path / "w", vit_better=True)
    for kind in ("shift-x", "shift-y"):
        tmp = tmp_path / "swap"
        shutil.move(dirs[0] / kind, tmp)
        shutil.move(dirs[1] / kind, dirs[0] / kind)
        shutil.move(tmp, dirs[1] / kind)
    assert _status(dirs)["F6"] == "not reproduced"
    for d in dirs[:2]:
        shutil.move(d / "shift-x", d / "tmp")
        shutil.move(d / "shift-y", d / "shift-x")
        shutil.move(d / "tmp", d / "shift-y")
        # the report files a group by the kind its results store, not by directory name
        for axis in ("x", "y"):
            for path in (d / f"shift-{axis}").rglob("equivariance.pt"):
                eq = EquivarianceResult.load(path)
                eq.group["spec"] = _gspec(f"shift-{axis}")
                eq.save(path)
    assert _status(dirs)["F7"] == "not reproduced"


def test_a_peak_is_a_rise_most_states_share_not_a_maximum_of_their_median():
    """iid state-to-state scatter makes local maxima of the per-shift median (candidates)
    but no peak; a rise every state shares is one, and so is one most states share."""
    from symaudit.report.findings import _peaks

    rng = np.random.default_rng(3)
    keep = np.ones(9, dtype=bool)
    noise = rng.uniform(1.0, 2.0, size=(9, 8))
    sig, cand = _peaks(noise, keep)
    assert cand and not sig
    shared = rng.uniform(1.0, 2.0, size=8) * (1 + 0.01 * rng.uniform(size=(9, 8)))
    shared[4] *= 1.2
    assert _peaks(shared, keep)[0] == {4}
    shared[4, :2] /= 1.5  # 6 of 8 states rise: p = 37/256 > 0.05, no longer a peak
    assert _peaks(shared, keep)[0] == set()
    shared[4, 1] *= 1.5  # 7 of 8: p = 9/256
    assert _peaks(shared, keep)[0] == {4}


def test_f8_fails_when_the_error_peaks_are_scatter(tmp_path):
    """The fixture's error bumps (every state) make F8 hold; iid scatter of the states'
    shift errors instead leaves maxima of the medians but no peaks, so F8 fails."""
    dirs = _study(tmp_path / "p", vit_better=True)
    assert _status(dirs)["F8"] == "reproduced"
    rng = np.random.default_rng(11)
    for d in dirs[:2]:
        for path in d.glob("shift-*/*/equivariance.pt"):
            eq = EquivarianceResult.load(path)
            eq.error = torch.as_tensor(rng.uniform(1.0, 2.0, size=tuple(eq.error.shape)))
            eq.save(path)
    f8 = next(f for f in findings(collect(dirs)) if f["id"] == "F8")
    assert f8["status"] == "not reproduced" and "error peaks at []" in f8["numbers"]


def test_a_defective_control_fails_f5(tmp_path):
    dirs = _study(tmp_path / "c", vit_better=True)
    # break the control: a nonzero defect for one element
    path = dirs[2] / "d4" / "ce-rp-batch0" / "equivariance.pt"
    eq = EquivarianceResult.load(path)
    eq.defect[3, 0] = 1e-3
    eq.save(path)
    assert _status(dirs)["F5"] == "not reproduced"


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("SYMAUDIT_REQUIRE_BROWSER"),
    reason="Debian chromium not installed (.ci/run installs it and requires this test)",
)
def test_report_renders_in_headless_chromium(tmp_path):
    html = build_report(_study(tmp_path / "d", vit_better=True), tmp_path / "rd")
    script = Path(__file__).parents[1] / "scripts" / "screenshot_report.sh"
    png = tmp_path / "shot.png"
    subprocess.run(
        ["bash", str(script), str(html), str(png), "1400x2000"],
        check=True,
        timeout=120,
        capture_output=True,
    )
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    # the page is not blank: a good share of pixels are not white (text, tables, figures)
    nonwhite = (img[..., :3].min(axis=-1) < 0.9).mean()
    assert nonwhite > 0.02, nonwhite


def test_cli_errors_are_clear(tmp_path):
    from typer.testing import CliRunner

    from symaudit.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "not audit directories" in res.output
    res = runner.invoke(
        app,
        ["audit", "--run", str(tmp_path / "norun"), "--out", str(tmp_path / "a"), "--group", "d4"],
    )
    assert res.exit_code == 2 and "no such checkpoint" in res.output
    assert not (tmp_path / "a").exists()


def test_f4_and_shift_readings_are_judged_within_each_family(tmp_path):
    """A ViT spike confined to the small family is invisible in medians pooled with a family
    1000x larger but is the finding: F4 must see it, in that family only."""
    spike = np.full((RES, 2 * N), 0.5)
    spike[5, 0] = 5.0  # one state of the first (small) family only
    fams = {"ce-rp": 1.0, "ce-rpui": 1000.0}
    dirs = _study(tmp_path / "s", vit_better=True, families=fams, vit_spike=spike)
    study = collect(dirs)
    vit = study.by_arch("vit").groups["shift-x"]
    small = np.asarray(vit.families) == "ce-rp"
    assert np.max(vit.error[:, small], axis=1).max() / np.median(vit.error[:, small]) > 5
    f4 = next(f for f in findings(study) if f["id"] == "F4")
    assert f4["status"] == "partly reproduced (1/2 families)", f4
    assert "Holds: ce-rp yes, ce-rpui no" in f4["numbers"]
    text = readings(study)["shift-x_error"]
    assert "CE-RP " in text and "CE-RPUI " in text
