"""Influence-guided augmentation (`symaudit augment`): can the audit pick a minimal D4
augmentation? (the paper's open question 1)

Per seed s, with the same model, data, step budget (epochs × steps per epoch) and seed in
every arm:

1. ``none``: train without augmentation and audit it on D4 (influence at the first step).
2. select (`symaudit.diagnostics.augmentation.select_elements`): the elements g ≠ e whose
   cross-influence ρ_g = median_i M^g_ii / M^e_ii is below the rule's threshold (default
   ``lowest:3``: the three least coupled); k of them.
3. ``influence``: retrain with augmentation by those k elements (each sample transformed by
   one of {e} ∪ S, drawn uniformly; `symaudit.training.augment_subset`); ``random<r>``: the
   same with r = 0..R-1 distinct random k-subsets of the seven (seeded by s); ``d4``: all
   seven (the usual full D4 augmentation).
4. audit every arm on D4 like ``none`` (the new audit's influence), and evaluate every arm on
   *all* test transitions transformed by every element of D4 (E_g per element).
5. ``compare``: table, figure and ``augment.json`` (`symaudit.report.augment`).

Every step is a `symaudit.pipeline.run.Unit` with a manifest, so a killed run resumes and a
changed setting (e.g. the threshold) redoes exactly the units that depend on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from symaudit._io import atomic_write_json
from symaudit.pipeline.presets import ModelPlan, StudyPreset
from symaudit.pipeline.run import (
    ReproduceResult,
    Unit,
    audit_unit,
    named_preset,
    plan,
    run_planned,
    train_config,
)

__all__ = ["AUGMENT_PRESETS", "AugmentPreset", "augment", "augment_plan"]


@dataclass(frozen=True)
class AugmentPreset:
    """The augmentation comparison: data (as in a `StudyPreset`), one model plan, the seeds,
    R random subsets per seed, the selection rule (`symaudit.diagnostics.augmentation`) and
    the D4 audit settings."""

    name: str
    data: StudyPreset  # its data settings only (families, grid, trajectories, snapshots)
    model: ModelPlan
    seeds: tuple[int, ...]
    random_subsets: int = 2
    rule: str = "lowest:3"
    per_family: int = 8
    test_batches: int = 1
    damping: str = "auto:1e-3"
    rank: int | str = 32
    max_iter: int = 500
    # audit the random arms too (their influence is context, not needed for the comparison
    # of errors; each audit costs about a training run)
    audit_random: bool = True
    description: str = ""
    arms: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("an augmentation comparison needs at least one seed")
        if self.random_subsets < 0:
            raise ValueError(f"random_subsets must be >= 0, got {self.random_subsets}")
        from symaudit.diagnostics.augmentation import parse_rule

        parse_rule(self.rule)  # validates
        arms = ("none", "influence", *(f"random{r}" for r in range(self.random_subsets)), "d4")
        object.__setattr__(self, "arms", arms)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("arms")
        return d


def _data(name: str, families=("ce-rp", "ce-crp", "ce-rpui"), **kw) -> StudyPreset:
    return StudyPreset(
        name=name,
        families=families,
        models=(),
        seeds=(0,),
        groups=("d4",),
        test_batches=1,
        **kw,
    )


AUGMENT_PRESETS: dict[str, AugmentPreset] = {
    p.name: p
    for p in [
        AugmentPreset(
            name="augment-micro",
            data=_data(
                "augment-micro",
                families=("ce-rp", "ce-crp"),  # two: the selection pools over families
                resolution=16,
                train_trajectories=4,
                test_trajectories=2,
                snapshots=4,
                t_final=0.24,
            ),
            model=ModelPlan("unet-tiny", epochs=2, batch_size=8, lr=2e-3),
            seeds=(0,),
            random_subsets=1,
            per_family=2,
            # a large damping and a small sketch keep the four audits to seconds
            damping="auto:1e-1",
            rank=4,
            max_iter=100,
            description="seconds-scale test of every step (models barely train)",
        ),
        AugmentPreset(
            name="augment",
            data=_data(
                "augment",
                resolution=32,
                train_trajectories=16,
                test_trajectories=8,
                snapshots=11,
                t_final=0.5,
                balance=0.5,
            ),
            model=ModelPlan("unet-small", epochs=12, batch_size=16, lr=3e-3),
            seeds=(0, 1),
            random_subsets=3,
            per_family=8,
            audit_random=False,  # 6 audits fewer: the whole comparison fits ~40 min CPU
            description="CPU: the demo's data at 32², unet-small as in the demo (12 epochs), "
            "2 seeds × (none, influence lowest:3, 3 random, d4); ~25 min CPU on one core",
        ),
    ]
}


def _name(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


def augment_plan(preset: AugmentPreset, out: Path, *, device: str = "cpu") -> list[Unit]:
    """The comparison's units in execution order (module docstring): the datasets, per seed
    and arm a training run (`_train_unit`) and its D4 audit (`_arm_audit_unit`; the ``none``
    arm's audit followed by the selection, `_select_unit`), then the comparison
    (`_compare_unit`)."""
    units = [u for u in plan(preset.data, out, device=device) if u.stage == "generate"]
    train_inputs = [u.name for u in units if u.name.startswith("generate/train/")]
    test_inputs = [u.name for u in units if u.name.startswith("generate/test/")]
    audit_settings = _audit_settings(preset)
    for seed in preset.seeds:
        base = train_config(preset.data, preset.model, out, seed, device=device)
        sel_path = out / "selection" / f"s{seed}.json"
        for arm in preset.arms:
            units.append(_train_unit(preset, arm, seed, base, out, sel_path, train_inputs))
            if arm.startswith("random") and not preset.audit_random:
                continue
            units.append(
                _arm_audit_unit(preset, arm, seed, out, audit_settings, test_inputs, device)
            )
            if arm == "none":  # the selection reads the no-augmentation run's audit
                units.append(_select_unit(preset, seed, out, sel_path))
    units.append(_compare_unit(preset, out, units, test_inputs, device))
    return units


def _audit_settings(preset: AugmentPreset) -> dict[str, Any]:
    """The D4 audit settings every audited arm shares."""
    return dict(
        groups=["d4"],
        damping=preset.damping,
        rtol=preset.model.rtol,
        test_batches=preset.test_batches,
        per_family=preset.per_family,
        cosine=False,
        max_iter=preset.max_iter,
        rank=preset.rank,
    )


def _train_unit(
    preset: AugmentPreset,
    arm: str,
    seed: int,
    base,
    out: Path,
    sel_path: Path,
    train_inputs: list[str],
) -> Unit:
    """Training of ``arm`` with seed ``seed``: ``base`` (the no-augmentation run's settings)
    with the arm's augmentation (`_arm_config`); every arm but ``none`` lists the seed's
    selection among its inputs."""
    from symaudit.training import train

    mp, d = preset.model, preset.data
    name = _name(arm, seed)
    run_dir = out / "runs" / name
    transitions = d.train_trajectories * len(d.families) * d.snapshots

    def work() -> None:
        train(_arm_config(base, arm, sel_path), run_dir, progress=False)

    return Unit(
        "train",
        f"train/{name}",
        {**base.to_dict(), "data": ["data/train"], "arm": arm},
        train_inputs + ([] if arm == "none" else [f"select/s{seed}"]),
        run_dir,
        mp.epochs * transitions * d.resolution**2 / 4e6,
        work,
        f"{arm} seed {seed}",
    )


def _arm_audit_unit(
    preset: AugmentPreset,
    arm: str,
    seed: int,
    out: Path,
    audit_settings: dict[str, Any],
    test_inputs: list[str],
    device: str,
) -> Unit:
    """The D4 audit of ``arm``'s run with seed ``seed`` into ``OUT/audits/<arm>-s<seed>``."""
    d = preset.data
    name = _name(arm, seed)
    return audit_unit(
        name,
        out / "runs" / name,
        out / "audits" / name,
        audit_settings,
        test_inputs,
        preset.per_family * len(d.families) * 8 * d.resolution**2 / 5e3,
        f"{arm} seed {seed}",
        device=device,
    )


def _select_unit(preset: AugmentPreset, seed: int, out: Path, sel_path: Path) -> Unit:
    """The elements of seed ``seed``'s influence and random arms, chosen from the ``none``
    arm's audit (`choose_subsets`) → ``sel_path``."""
    name = _name("none", seed)
    audit_dir = out / "audits" / name

    def sel() -> None:
        from symaudit.diagnostics.augmentation import choose_subsets

        atomic_write_json(
            sel_path,
            choose_subsets(audit_dir, preset.rule, preset.random_subsets, seed),
        )

    return Unit(
        "select",
        f"select/s{seed}",
        {"rule": preset.rule, "random_subsets": preset.random_subsets, "seed": seed},
        [f"audit/{name}"],
        sel_path,
        0.1,
        sel,
        f"elements for seed {seed}",
    )


def _compare_unit(
    preset: AugmentPreset, out: Path, units: list[Unit], test_inputs: list[str], device: str
) -> Unit:
    """Table and figure over every arm and seed: reads each arm's audit (its training run
    if it is not audited), the selections and the test data."""
    names = [_name(a, s) for s in preset.seeds for a in preset.arms]
    audited = {u.name for u in units if u.stage == "audit"}

    def compare() -> None:
        from symaudit.report.augment import write_augment_report

        write_augment_report(out, preset, device=device)

    return Unit(
        "compare",
        "compare",
        {"preset": preset.to_dict()},
        [f"audit/{n}" if f"audit/{n}" in audited else f"train/{n}" for n in names]
        + [f"select/s{s}" for s in preset.seeds]
        + test_inputs,
        out / "compare",
        len(names) * 0.5,
        compare,
        "table + figure",
    )


def _arm_config(base, arm: str, selection: Path):
    """The training settings of one arm (``base`` is the no-augmentation run's)."""
    if arm == "none":
        return base
    if arm == "d4":
        return replace(base, augment="d4")
    chosen = json.loads(selection.read_text())
    elements = chosen["influence"] if arm == "influence" else chosen["random"][int(arm[6:])]
    return replace(base, augment="d4", augment_elements=list(elements))


def augment(
    preset: str | AugmentPreset,
    out: str | Path,
    *,
    device: str = "cpu",
    rule: str | None = None,
    seeds: tuple[int, ...] | None = None,
    random_subsets: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ReproduceResult:
    """Run (or resume) the augmentation comparison ``preset`` under ``out`` (module
    docstring); ``rule``, ``seeds`` and ``random_subsets`` override the preset's.
    Returns which units ran; the table is ``out/compare/index.html``."""
    preset = named_preset(preset, AUGMENT_PRESETS)
    changes = {
        k: v
        for k, v in dict(rule=rule, seeds=seeds, random_subsets=random_subsets).items()
        if v is not None
    }
    if changes:
        preset = replace(preset, **changes)
    return run_planned(
        augment_plan,
        preset,
        out,
        "compare/index.html",
        device=device,
        progress=progress,
        log=log,
        title="augment",
    )
