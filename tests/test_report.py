"""The report on synthetic audits with known numbers: the findings F1–F5 follow the numbers
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
from symaudit.report import build_report, collect, findings
from symaudit.report.findings import readings

D4 = ["e", "r", "r2", "r3", "s", "rs", "r2s", "r3s"]
SHIFTS = [0, 4, 8, 12]
N = 6


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
        "seconds": 1.5,
        "history": [],
    }


def _audit(
    path: Path,
    arch: str,
    seed: int,
    error: dict,
    defect: dict,
    cos: dict,
    families: list[str] | None = None,
) -> Path:
    """Write an audit directory: per group kind, E_g (|G|, N), D_g and the cosine diagonal
    (raw = cosine with unit norms, so Frobenius = cos / ||cos||_F per batch). With
    ``families``, the batch holds N / len(families) consecutive states of each, in that
    order (as ``symaudit audit`` records it)."""
    specs = {"d4": ("d4", D4, {}), "shift-x": ("shift-x:4", [f"t{s}" for s in SHIFTS], {})}
    pieces = {}
    for kind, (spec, names, _) in specs.items():
        where = Path(spec.replace(":", "_")) / "batch0"
        g = len(names)
        shifts = {"shifts": SHIFTS} if kind != "d4" else {}
        EquivarianceResult(
            names,
            torch.as_tensor(error[kind], dtype=torch.float64),
            torch.as_tensor(defect[kind], dtype=torch.float64),
            group={"name": kind, "elements": names, "spec": shifts},
            settings={"num_states": N, "resolution": [16, 16]},
        ).save(path / where / "equivariance.pt")
        # off-diagonal influence between different states, the same for every model
        gen = torch.Generator().manual_seed(1)
        raw = 0.6 * torch.rand(g, N, N, generator=gen, dtype=torch.float64) - 0.3
        raw[:, range(N), range(N)] = torch.as_tensor(cos[kind], dtype=torch.float64)
        InfluenceResult(
            names,
            raw,
            torch.ones(N, dtype=torch.float64),
            torch.ones(g, N, dtype=torch.float64),
            1e-3,
            reports={"test": _report(N, 5e-3)},
            timings={"solve": 1.0},
            settings={"num_params": 1234},
        ).save(path / where / "influence.pt")
        pieces[spec] = [
            {
                "equivariance": str(where / "equivariance.pt"),
                "influence": str(where / "influence.pt"),
                "sweep": [],
                "time_index": 0,
                "time": 0.0,
            }
        ]
    preset = {"unet": "unet-tiny", "vit": "vit-tiny", "gcnn": "gcnn-tiny"}[arch]
    atomic_write_json(
        path / "audit.json",
        {
            "format": AUDIT_FORMAT,
            "complete": True,
            "model": {"preset": preset, "architecture": arch, "kwargs": {}},
            "run": {"seed": seed},
            "settings": {"per_family": N // len(families)} if families else {},
            "pieces": pieces,
        }
        | ({"families": families} if families else {}),
    )
    e = float(np.mean(error["d4"][0]))
    atomic_write_json(
        path / "test_errors.json", {"all": {"one_step": e, "persistence_one_step": 2 * e}}
    )
    return path


def _study(
    tmp: Path,
    *,
    vit_better: bool,
    families: dict[str, float] | None = None,
    vit_spike: np.ndarray | None = None,
) -> list[Path]:
    """UNet, ViT and G-CNN audits with known numbers; ``families`` {name: error scale}, in
    batch order, multiplies each family's states' errors by its scale; ``vit_spike``
    `(shifts, N)` replaces the ViT's multiplier of its shift errors."""
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, size=N)
    fams = list(families) if families else None
    if families:
        base = base * np.repeat(list(families.values()), N // len(families))
    flat = np.ones((len(SHIFTS), 1))
    dirs = []
    # UNet: error 1x untransformed, 1.2x transformed; flat along shifts; influence ~0.5
    unet_d4 = np.vstack([base] + [1.2 * base] * 7)
    dirs.append(
        _audit(
            tmp / "unet",
            "unet",
            0,
            {"d4": unet_d4, "shift-x": flat * base},
            {"d4": np.full((8, N), 0.1), "shift-x": np.full((4, N), 0.01)},
            {
                "d4": np.vstack([np.ones(N)] + [rng.uniform(0.2, 0.8, N) for _ in range(7)]),
                "shift-x": np.vstack([np.ones(N)] + [rng.uniform(0.3, 0.9, N) for _ in range(3)]),
            },
            fams,
        )
    )
    # ViT: 0.5x (or 2x) untransformed, 1.25x transformed; a spike at one shift; influence ~0
    f = 0.5 if vit_better else 2.0
    spike = np.array([[1.0], [5.0], [1.0], [1.0]]) if vit_spike is None else vit_spike
    dirs.append(
        _audit(
            tmp / "vit",
            "vit",
            0,
            {"d4": np.vstack([f * base] + [1.25 * base] * 7), "shift-x": spike * base},
            {"d4": np.full((8, N), 0.2), "shift-x": np.full((4, N), 0.02)},
            {
                "d4": np.vstack([np.ones(N)] + [rng.uniform(-0.01, 0.01, N) for _ in range(7)]),
                "shift-x": np.vstack([np.ones(N)] + [rng.uniform(0.0, 0.05, N) for _ in range(3)]),
            },
            fams,
        )
    )
    # G-CNN: exactly equivariant: same error for every g, zero defect, cosine 1 on the orbit
    dirs.append(
        _audit(
            tmp / "gcnn",
            "gcnn",
            0,
            {"d4": np.vstack([base] * 8), "shift-x": flat * base},
            {"d4": np.zeros((8, N)), "shift-x": np.zeros((4, N))},
            {"d4": np.ones((8, N)), "shift-x": np.ones((4, N))},
            fams,
        )
    )
    return dirs


def _status(dirs: list[Path]) -> dict[str, str]:
    return {f["id"]: f["status"] for f in findings(collect(dirs))}


def test_findings_follow_the_numbers_and_the_report_shows_them(tmp_path):
    dirs = _study(tmp_path / "a", vit_better=True)
    html = build_report(dirs, tmp_path / "ra")
    assert _status(dirs) == {
        "F1": "reproduced",
        "F2": "reproduced",
        "F3": "reproduced",
        "F4": "reproduced",
        "F5": "reproduced",
    }
    text = html.read_text()
    assert "not reproduced" not in text and text.count("<td><b>reproduced</b></td>") == 5
    for fig in sorted((tmp_path / "ra").glob("fig*.svg")):
        assert f"src='{fig.name}'" in text
    assert len(list((tmp_path / "ra").glob("fig*.png"))) == 9
    rep = json.loads((tmp_path / "ra" / "report.json").read_text())
    # exact pooled medians: UNet untransformed median = median(base)
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, size=N)
    assert rep["models"]["unet-tiny"]["d4"]["median_untransformed_error"] == pytest.approx(
        float(np.median(base)), rel=1e-12
    )
    assert rep["models"]["vit-tiny"]["d4"]["median_error"][0] == pytest.approx(
        0.5 * float(np.median(base)), rel=1e-12
    )
    # audits that recorded no families: one pooled panel, drawing every state
    d4 = EquivarianceResult.load(dirs[0] / "d4" / "batch0" / "equivariance.pt").error.numpy()
    assert list(rep["figures"]["fig2_d4_error"]) == ["all"]
    drawn = rep["figures"]["fig2_d4_error"]["all"]["unet-tiny"]["median"]
    assert drawn == pytest.approx(np.median(d4, axis=1), rel=1e-12)


def _families_of_states(audit_dir: Path) -> np.ndarray:
    """Family of each state of the audit's one batch, from audit.json as written."""
    meta = json.loads((audit_dir / "audit.json").read_text())
    per = meta["settings"]["per_family"]
    return np.array([f for f in meta["families"] for _ in range(per)])


def test_error_figures_draw_one_panel_per_family_with_that_familys_states(tmp_path):
    # batch order is not alphabetical, and CE-RPUI's errors are 1000x CE-RP's (as in the demo)
    scales = {"ce-rpui": 1000.0, "ce-rp": 1.0}
    dirs = _study(tmp_path / "f", vit_better=True, families=scales)
    build_report(dirs, tmp_path / "rf")
    figs = json.loads((tmp_path / "rf" / "report.json").read_text())["figures"]
    shifts = {"fig4_shift-x_error": "shift-x_4"}
    for d in dirs:
        preset = json.loads((d / "audit.json").read_text())["model"]["preset"]
        fam = _families_of_states(d)
        d4 = EquivarianceResult.load(d / "d4" / "batch0" / "equivariance.pt").error.numpy()
        for f in scales:
            sel = fam == f
            assert sel.sum() == N // 2
            # Fig. 1: untransformed and D4-averaged medians of this family's states only
            drawn = figs["fig1_test_error"][f][preset]
            assert drawn["untransformed"] == pytest.approx(np.median(d4[0, sel]), rel=1e-12)
            assert drawn["d4_averaged"] == pytest.approx(np.median(d4.mean(0)[sel]), rel=1e-12)
            # Fig. 2: per D4 element
            drawn = figs["fig2_d4_error"][f][preset]["median"]
            assert drawn == pytest.approx(np.median(d4[:, sel], axis=1), rel=1e-12)
            # Figs 4: median marker and 10-90 % whisker per shift
            for fig_id, where in shifts.items():
                err = EquivarianceResult.load(d / where / "batch0" / "equivariance.pt").error
                err = err.numpy()[:, sel]
                drawn = figs[fig_id][f][preset]
                assert drawn["median"] == pytest.approx(np.median(err, axis=1), rel=1e-12)
                assert drawn["q10"] == pytest.approx(np.quantile(err, 0.1, axis=1), rel=1e-12)
                assert drawn["q90"] == pytest.approx(np.quantile(err, 0.9, axis=1), rel=1e-12)
        # the split is real: every CE-RP panel lies far below every CE-RPUI panel, whereas
        # the pooled states span both scales
        med = figs["fig2_d4_error"]
        assert max(med["ce-rp"][preset]["median"]) < 0.01 * min(med["ce-rpui"][preset]["median"])
    for fig_id in ("fig1_test_error", "fig2_d4_error", *shifts):
        assert sorted(figs[fig_id]) == sorted(scales), fig_id
    # the findings keep their per-family verdicts (the scales cancel in per-family ratios)
    assert _status(dirs)["F1"] == "reproduced" and _status(dirs)["F2"] == "reproduced"


def test_a_family_record_that_does_not_match_the_batch_is_an_error(tmp_path):
    dirs = _study(tmp_path / "m", vit_better=True, families={"ce-rp": 1.0, "ce-crp": 1.0})
    meta = json.loads((dirs[0] / "audit.json").read_text())
    meta["families"] = ["ce-rp", "ce-crp", "ce-rpui"]  # 3 x 3 states, but the batch has 6
    atomic_write_json(dirs[0] / "audit.json", meta)
    with pytest.raises(ValueError, match="mini-batch has 6 states"):
        collect(dirs)


def test_a_finding_that_fails_is_reported_as_not_reproduced(tmp_path):
    status = _status(_study(tmp_path / "b", vit_better=False))
    assert status["F1"] == "not reproduced" and status["F2"] == "not reproduced"
    assert status["F5"] == "reproduced"


def test_a_defective_control_fails_f5(tmp_path):
    dirs = _study(tmp_path / "c", vit_better=True)
    # break the control: a nonzero defect for one element
    eq = EquivarianceResult.load(dirs[2] / "d4" / "batch0" / "equivariance.pt")
    eq.defect[3, 0] = 1e-3
    eq.save(dirs[2] / "d4" / "batch0" / "equivariance.pt")
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
    1000x larger (pooled max/min ~ 1.01) but is the finding: F4 must see it."""
    spike = np.ones((len(SHIFTS), N))
    spike[1, : N // 2] = 5.0  # the first (small) family only
    fams = {"ce-rp": 1.0, "ce-rpui": 1000.0}
    dirs = _study(tmp_path / "s", vit_better=True, families=fams, vit_spike=spike)
    study = collect(dirs)
    vit = study.by_arch("vit").groups["shift-x"]
    small = np.asarray(vit.families) == "ce-rp"
    pooled = np.median(vit.error, axis=1)
    assert pooled.max() / pooled.min() < 1.1  # pooling hides the spike
    within = np.median(vit.error[:, small], axis=1)
    assert within.max() / within.min() == pytest.approx(5.0)
    assert _status(dirs)["F4"] == "reproduced"
    text = readings(study)["shift-x_error"]
    assert "CE-RP " in text and "CE-RPUI " in text and "max/min 5.00" in text
