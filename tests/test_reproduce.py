"""End to end: `reproduce("micro")` (generate → train → audit → report), its resumption, the
audit's test-state selection, and the report's numbers against the audit files."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from symaudit.data import open_dataset
from symaudit.diagnostics.audit import AuditError, load_audit, run_audit
from symaudit.diagnostics.equivariance import equivariance_error
from symaudit.groups import from_spec
from symaudit.pipeline import PRESETS, reproduce
from symaudit.training import SMSE, load_checkpoint

MICRO = PRESETS["micro"]
FIGURES = [
    "fig1_test_error",
    "fig2_d4_error",
    "fig3_d4_influence",
    "fig4_shift-x_error",
    "fig5_shift-y_error",
    "fig6_shift-x_influence",
    "fig7_shift-y_influence",
    "fig8_defect",
    "fig9_solver",
]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro")
    res = reproduce("micro", out, progress=False)
    return out, res


def test_micro_runs_every_stage_and_writes_every_figure(study):
    out, res = study
    stages = {name.split("/")[0] for name in res.ran}
    assert stages == {"generate", "train", "audit", "report"}
    assert res.skipped == []
    n_runs = len(MICRO.models) * len(MICRO.seeds)
    assert sum(n.startswith("train/") for n in res.ran) == n_runs
    assert sum(n.startswith("audit/") for n in res.ran) == n_runs
    html = (out / "report" / "index.html").read_text()
    for fig in FIGURES:
        for ext in ("png", "svg"):
            f = out / "report" / f"{fig}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
        assert f"{fig}.svg" in html
    for fid in ("F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8"):
        assert f"<td>{fid}</td>" in html


def _pooled(audits, spec, fn) -> np.ndarray:
    """``fn(equivariance, [influence per damping])`` of every mini-batch of ``spec``,
    concatenated along states."""
    return np.concatenate(
        [
            fn(eq, [inf, *sw])
            for a in audits
            for eq, inf, sw in zip(
                a.equivariance[spec], a.influence[spec], a.sweep[spec], strict=True
            )
        ],
        1,
    )


def test_report_numbers_equal_audit_files(study):
    """Every aggregate report.json holds, recomputed here from the audit files."""
    out, _ = study
    report = json.loads((out / "report" / "report.json").read_text())
    for mp in MICRO.models:
        audits = [load_audit(out / "audits" / f"{mp.preset}-s{s}") for s in MICRO.seeds]
        nums = report["models"][mp.preset]
        for spec in mp.audit_groups(MICRO):
            kind = spec  # d4, shift-x, shift-y: the report's keys are the specs themselves
            got = nums[kind]
            err = _pooled(audits, spec, lambda eq, _: eq.error.numpy())
            dfc = _pooled(audits, spec, lambda eq, _: eq.defect.numpy())
            assert got["median_error"] == pytest.approx(np.median(err, 1), rel=1e-12)
            assert got["q10_error"] == pytest.approx(np.quantile(err, 0.1, 1), rel=1e-12)
            assert got["q90_error"] == pytest.approx(np.quantile(err, 0.9, 1), rel=1e-12)
            assert got["max_error"] == pytest.approx(err.max(1), rel=1e-12)
            assert got["median_defect"] == pytest.approx(np.median(dfc, 1), rel=1e-12, abs=1e-300)
            assert got["max_defect"] == pytest.approx(dfc.max(1), rel=1e-12, abs=1e-300)
            assert got["num_states"] == err.shape[1]
            n = MICRO.per_family
            off_diag = ~np.eye(n, dtype=bool)
            for j in range(len(MICRO.dampings)):
                frob = _pooled(audits, spec, lambda _, r, j=j: r[j].diagonal("frobenius").numpy())
                off = _pooled(
                    audits, spec, lambda _, r, j=j, m=off_diag: r[j].frobenius.numpy()[:, m]
                )
                assert got["median_frobenius"][j] == pytest.approx(np.median(frob, 1), rel=1e-12)
                assert got["median_offdiagonal"][j] == pytest.approx(np.median(off, 1), rel=1e-12)
                # the paper's average of Frobenius-normalised matrices over mini-batches
                mats = [
                    [inf, *sw][j].frobenius.numpy()
                    for a in audits
                    for inf, sw in zip(a.influence[spec], a.sweep[spec], strict=True)
                ]
                mean = np.mean(mats, axis=0)
                diag = np.diagonal(mean, axis1=1, axis2=2).mean(1)
                assert got["paper_mean_diagonal"][j] == pytest.approx(diag, rel=1e-12)
                assert got["paper_mean_offdiagonal"][j] == pytest.approx(
                    mean[:, off_diag].mean(1), rel=1e-12
                )
            cos = _pooled(audits, spec, lambda _, r: r[0].diagonal().numpy())
            assert got["median_cosine"] == pytest.approx(np.median(cos, 1), rel=1e-12)
            # each mini-batch is one family's states
            fams = np.array(
                [p["family"] for a in audits for p in a.meta["pieces"][spec] for _ in range(n)]
            )
            assert sorted(set(fams)) == sorted(MICRO.families)
            if kind == "d4":
                for f in MICRO.families:
                    want = np.median(err[0, fams == f]), np.median(err.mean(0)[fams == f])
                    assert got["family_median_untransformed_error"][f] == pytest.approx(want[0])
                    assert got["family_median_d4_averaged_error"][f] == pytest.approx(want[1])
        one_step = {str(a.seed): a.test_errors["all"]["one_step"] for a in audits}
        assert nums["test_one_step"] == one_step
        # real wall times: per audit, the CG solves of every batch and damping, and the
        # influence sweeps as timed around them (each at least its solves)
        for a in audits:
            results = [
                r
                for spec in a.influence
                for inf, sw in zip(a.influence[spec], a.sweep[spec], strict=True)
                for r in (inf, *sw)
            ]
            solve = sum(r.timings["solve"] for r in results)
            sweeps = sum(
                inf.settings["audit"]["sweep_seconds"]
                for spec in a.influence
                for inf in a.influence[spec]
            )
            assert nums["audit_seconds"][str(a.seed)] == pytest.approx(
                {"solve_seconds": solve, "influence_seconds": sweeps}, rel=1e-12
            )
            assert 0 < solve < sweeps
        # one row per mini-batch and damping of each influence computation: shift-x and
        # shift-y share theirs (one sketch, one solve), which shift-x carries
        rows = report["solver"][mp.preset]
        groups = mp.audit_groups(MICRO)
        computations = 1 + ("shift-x" in groups)  # d4; shift-x + shift-y together
        per = len(MICRO.families) * MICRO.test_batches * len(MICRO.dampings)
        assert len(rows) == computations * per
        for a in audits:
            for inf in a.influence.get("shift-y", []):
                assert inf.reports == {} and inf.timings["solve"] == 0
                assert inf.settings["audit"]["solved_with"] == ["shift-x", "shift-y"]
        assert sum(r["seconds"] for r in rows) == pytest.approx(
            sum(nums["audit_seconds"][str(a.seed)]["solve_seconds"] for a in audits), rel=1e-12
        )
    # the exactly equivariant control must be judged equivariant (F5), from real numbers
    f5 = next(f for f in report["findings"] if f["id"] == "F5")
    assert f5["status"] == "reproduced", f5


def test_audit_uses_the_papers_test_states(study):
    """One family per mini-batch (its first N test trajectories); D4 at (x_0, x_1),
    translations at (x_{T-2}, x_{T-1}); errors at every shift, influence at the rule-chosen
    shifts; recomputing E_g from the raw data gives the stored value."""
    from symaudit.diagnostics.shifts import influence_shift_set

    out, _ = study
    name = f"{MICRO.models[0].preset}-s{MICRO.seeds[0]}"
    rec = load_audit(out / "audits" / name)
    model, info = load_checkpoint(out / "runs" / name / "checkpoint.pt")
    loss = SMSE(info.channel_rms)
    n = MICRO.per_family
    for spec in ("d4", "shift-x"):
        pieces = rec.meta["pieces"][spec]
        assert [p["family"] for p in pieces] == sorted(MICRO.families)
        for k, piece in enumerate(pieces):
            with open_dataset(out / "data" / "test" / f"{piece['family']}.h5") as ds:
                traj = ds.read(list(range(n)))
            step = 0 if spec == "d4" else traj.shape[1] - 2
            assert piece["time_index"] == step
            group = from_spec(spec, info.layout, resolution=traj.shape[-1])
            ref = equivariance_error(model, (traj[:, step], traj[:, step + 1]), group, loss)
            torch.testing.assert_close(rec.equivariance[spec][k].error, ref.error, rtol=0, atol=0)
    # every shift in the errors; influence on the rule's set (periods: ViT patch 4, UNet 16)
    res = MICRO.resolution
    assert rec.equivariance["shift-x"][0].elements == [f"tx{s}" if s else "e" for s in range(res)]
    want = influence_shift_set([16, 4, None], res)
    assert want == [0, 1, 2, 4, 6, 8, 10, 12, 14]
    assert rec.influence["shift-x"][0].elements == [f"tx{s}" if s else "e" for s in want]
    # a rerun with other settings is refused, naming the difference
    with pytest.raises(AuditError, match="rtol"):
        run_audit(
            out / "runs" / name,
            list(MICRO.groups),
            out=out / "audits" / name,
            rtol=0.123,
            test_batches=MICRO.test_batches,
            test_data=[str(out / "data" / "test")],
        )


def test_resume_redoes_only_the_interrupted_unit(study):
    out, _ = study
    name = f"{MICRO.models[1].preset}-s{MICRO.seeds[0]}"
    # an audit killed mid-way: one piece and the manifest missing, the other pieces present
    audit_dir = out / "audits" / name
    pieces = sorted(audit_dir.rglob("*.pt"))
    victim = next(p for p in pieces if p.name == "influence.pt")
    victim.unlink()
    (out / "manifests" / f"audit__{name}.json").unlink()
    # (its damping sweep is computed with it, in the same directory: redone too)
    before = {p: p.stat().st_mtime_ns for p in pieces if p.parent != victim.parent}
    # a training stage whose manifest was lost (killed after its last checkpoint)
    other = f"{MICRO.models[2].preset}-s{MICRO.seeds[0]}"
    (out / "manifests" / f"train__{other}.json").unlink()
    res = reproduce("micro", out, progress=False)
    assert sorted(res.ran) == sorted([f"audit/{name}", f"train/{other}"])
    assert victim.is_file()
    assert {p: p.stat().st_mtime_ns for p in before} == before  # other pieces not redone
    assert f"audit/{other}" in res.skipped and "report" in res.skipped


def test_changed_settings_redo_dependent_units_only(study, tmp_path):
    out, _ = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # another report input list: only the report depends on it
    from dataclasses import replace

    changed = replace(MICRO, models=MICRO.models[:2])
    res = reproduce(changed, copy, progress=False)
    assert res.ran == ["report"]
    report = json.loads((copy / "report" / "report.json").read_text())
    assert sorted(report["models"]) == sorted(m.preset for m in MICRO.models[:2])
    assert os.path.getsize(copy / "report" / "index.html") > 0


def test_new_report_code_redoes_the_report_only(study, tmp_path, monkeypatch):
    """The report unit's digest covers the report package's sources and templates (not its
    bytecode): a report judged by other criteria is redone, its audits are not."""
    import symaudit.pipeline.run as run

    pkg = tmp_path / "pkg"
    (pkg / "templates").mkdir(parents=True)
    (pkg / "findings.py").write_text("LEVEL = 0.05\n")
    (pkg / "templates" / "page.html.j2").write_text("{{ x }}")
    first = run._report_code(pkg)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "findings.cpython-311.pyc").write_bytes(b"\0")
    assert run._report_code(pkg) == first
    (pkg / "findings.py").write_text("LEVEL = 0.01\n")
    assert run._report_code(pkg) != first
    (pkg / "findings.py").write_text("LEVEL = 0.05\n")
    (pkg / "templates" / "page.html.j2").write_text("{{ y }}")
    assert run._report_code(pkg) != first

    out, _ = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    monkeypatch.setattr(run, "_report_code", lambda: "other criteria")
    assert reproduce("micro", copy, progress=False).ran == ["report"]


def test_damping_sweep_is_relative_to_the_spectrum(study, tmp_path):
    out, _ = study
    sweep_spec = ("auto:0.1", "auto:0.3", "auto:1")  # large lambdas: few CG iterations
    name = f"{MICRO.models[0].preset}-s{MICRO.seeds[0]}"
    run_audit(
        out / "runs" / name,
        ["c4"],
        out=tmp_path / "sweep",
        damping="auto:0.03",
        damping_sweep=sweep_spec,
        test_batches=1,
        per_family=MICRO.per_family,
        test_data=[str(out / "data" / "test")],
        rank=16,
    )
    rec = load_audit(tmp_path / "sweep")
    main, sweep = rec.influence["c4"][0], rec.sweep["c4"][0]
    top = main.spectrum["top_eigenvalue"]
    assert main.damping == pytest.approx(0.03 * top, rel=1e-12)
    fracs = [float(d.split(":")[1]) for d in sweep_spec]
    assert [r.damping for r in sweep] == pytest.approx([f * top for f in fracs], rel=1e-12)
    # more damping, less influence: the raw quadratic forms decrease monotonically in lambda
    norms = [float(r.norms.square().sum()) for r in sweep]
    assert all(a > b for a, b in zip(norms, norms[1:], strict=False)), norms
