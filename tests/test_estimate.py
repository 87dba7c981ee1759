"""The cost model's counts against a measured micro run, and its arithmetic."""

from __future__ import annotations

import dataclasses
import math

import h5py
import pytest

from symaudit.diagnostics.audit import load_audit
from symaudit.pipeline import PRESETS
from symaudit.pipeline.estimate import (
    Assumptions,
    ModelCosts,
    UnitCosts,
    estimate,
    states_per_batch,
)
from symaudit.training import load_checkpoint

MICRO = PRESETS["micro"]


def _costs(preset) -> UnitCosts:
    """Round unit costs (no measurement): the tests check counts and arithmetic."""
    models = {m.preset: ModelCosts(m.preset, 1000, 0.5, 2.0, 0.25, 0.125) for m in preset.models}
    return UnitCosts("cpu", "float32", 1, euler_step=0.01, steps_to_t_final=100, models=models)


def test_counts_match_a_micro_run(micro_study):
    micro = micro_study
    stages = estimate(MICRO, _costs(MICRO))
    gen = stages[0]
    # the data files hold exactly the predicted number of float32 field bytes
    nbytes = 0
    for path in (micro / "data").rglob("*.h5"):
        with h5py.File(path) as f:
            nbytes += sum(
                d.nbytes for d in f.values() if isinstance(d, h5py.Dataset) and d.ndim == 5
            )
    assert nbytes == gen.disk_bytes
    trains = {s.detail.split()[0]: s for s in stages if s.stage == "train"}
    audits = [s for s in stages if s.stage == "audit"]
    for mp in MICRO.models:
        for seed in MICRO.seeds:
            _, info = load_checkpoint(micro / "runs" / f"{mp.preset}-s{seed}" / "checkpoint.pt")
            assert info.step == trains[mp.preset].counts["optimizer_steps"]
            rec = load_audit(micro / "audits" / f"{mp.preset}-s{seed}")
            mine = [s for s in audits if s.detail.startswith(mp.preset + " ")]
            # d4 alone; shift-x and shift-y in one influence computation (run_audit); the
            # G-CNN control is audited on d4 only
            shifts = [g for g in mp.audit_groups(MICRO) if g.startswith("shift-")]
            clusters = [["d4"]] + ([shifts] if shifts else [])
            assert [s.detail.split()[1] for s in mine] == ["+".join(c) for c in clusters]
            for st, specs in zip(mine, clusters, strict=True):
                results = rec.influence[specs[0]]  # the first group carries the solves
                assert st.counts["audits"] == len(results) * len(MICRO.seeds)
                union = sum(len(rec.influence[g][0].elements) for g in specs) - len(specs) + 1
                assert union == st.counts["elements"]
                errors = sum(len(rec.equivariance[g][0].elements) for g in specs)
                assert errors == st.counts["error_elements"]
                for res in results:
                    assert res.norms.numel() == st.counts["states"] == states_per_batch(MICRO)
                    cols = sum(len(r["residuals"]) for r in res.reports.values())
                    assert cols == st.counts["columns"]


def test_seconds_are_counts_times_unit_costs():
    costs, a = _costs(MICRO), Assumptions()
    stages = estimate(MICRO, costs, a)
    gen = stages[0]
    assert gen.seconds == pytest.approx(gen.counts["trajectories"] * 100 * 0.01)
    for st in stages[1:]:
        c = st.counts
        if st.stage == "train":
            mp = next(m for m in MICRO.models if st.detail.startswith(m.preset + " "))
            assert st.seconds == pytest.approx(
                c["runs"] * c["optimizer_steps"] * mp.batch_size * 0.5
            )
            continue
        n, size, cols, rank = c["states"], c["elements"], c["columns"], c["sketch_rank"]
        product = n * 2.0  # a chi column costs N states' worth
        fixed = (rank + a.spectrum_products) * product + n * size * 0.25
        fixed += n * c["error_elements"] * 0.125
        solves = len(MICRO.dampings) * cols * product * (a.iterations + 1)
        want = c["audits"] * (fixed + solves)
        assert st.seconds == pytest.approx(want)
        assert st.seconds_high > st.seconds
        # paper-style baseline: one unpreconditioned solve per (state, element) pair
        base = c["audits"] * len(MICRO.dampings) * n * size * a.baseline_iterations * product
        assert st.baseline_seconds == pytest.approx(base)
    # doubling every unit cost doubles every stage (the model is linear in them)
    double = dataclasses.replace(
        costs,
        euler_step=0.02,
        models={
            k: dataclasses.replace(m, train_sample=1.0, chi_column=4.0, gradient=0.5, forward=0.25)
            for k, m in costs.models.items()
        },
    )
    for s1, s2 in zip(stages, estimate(MICRO, double, a), strict=True):
        assert s2.seconds == pytest.approx(2 * s1.seconds)


def test_paper_preset_disk_and_memory_are_the_papers_scale():
    """3 x 5,000 training trajectories of 16 snapshots at 128^2, float32: ~63 GB that the
    in-memory path would hold; streamed (as "auto" does above a quarter of the RAM), the
    training stage holds two batches instead."""
    paper = PRESETS["paper"]
    stages = estimate(paper, _costs(paper))
    train = next(s for s in stages if s.stage == "train")
    snap = 4 * 128 * 128 * 4
    in_memory = paper.train_trajectories * 3 * paper.snapshots * snap
    assert train.counts["in_memory_bytes"] == in_memory > 60e9
    assert train.counts["streamed"] and train.peak_ram_bytes < 1e9
    assert math.isclose(stages[0].disk_bytes, (5000 + 64) * 3 * paper.snapshots * snap)


def test_unit_costs_round_trip_through_json():
    import json

    costs = _costs(PRESETS["paper"])
    again = UnitCosts.from_dict(json.loads(json.dumps(costs.to_dict())))
    assert again == costs
    assert estimate(PRESETS["paper"], again) == estimate(PRESETS["paper"], costs)
