"""The patch-size ablation the paper proposes (`symaudit patch-ablation`): ViTs that differ
only in their patch size p, trained and audited on translations like the study's models;
if the paper's explanation holds, the period of the translation error and influence
profiles follows p (`symaudit.diagnostics.periods`).

The study pipeline (`symaudit.pipeline.run.plan`) does the data, training and audits (one
`ModelPlan` per patch size, named ``<preset>-p<p>``); the "periods" unit replaces the
study report with the period table and figure (`symaudit.report.periods`). Every unit keeps
its manifest, so a killed ablation resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from symaudit.pipeline.presets import PRESETS, ModelPlan, StudyPreset
from symaudit.pipeline.run import ReproduceResult, Unit, named_preset, plan, run_planned

__all__ = ["PATCH_PRESETS", "patch_ablation", "patch_plan"]


def _vits(base: ModelPlan, patches: tuple[int, ...], epochs: int | None = None) -> tuple:
    return tuple(
        replace(
            base,
            overrides={**base.overrides, "patch": p},
            name=f"{base.preset}-p{p}",
            epochs=epochs or base.epochs,
        )
        for p in patches
    )


_DEMO_VIT = next(m for m in PRESETS["demo"].models if m.preset == "vit-small")
_MICRO_VIT = next(m for m in PRESETS["micro"].models if m.preset == "vit-tiny")

PATCH_PRESETS: dict[str, StudyPreset] = {
    p.name: p
    for p in [
        replace(
            PRESETS["micro"],
            name="patches-micro",
            families=("ce-rp", "ce-crp"),
            models=_vits(_MICRO_VIT, (2, 4, 8)),
            groups=("shift-x", "shift-y"),
            dampings=("auto:1e-3",),
            cosine=False,
            description="seconds-scale test of the ablation (16², vit-tiny with p = 2, 4, 8)",
        ),
        replace(
            PRESETS["demo"],
            name="patches",
            # the demo's ViT (64², width 64, 4 layers) at p = 4, 8, 16 on the demo's data,
            # half its epochs: patch 4 has 256 tokens and costs ~7x patch 8 per step
            models=_vits(_DEMO_VIT, (4, 8, 16), epochs=20),
            groups=("shift-x", "shift-y"),
            dampings=("auto:1e-3",),
            description="ViT patch-size ablation at the demo's scale (p = 4, 8, 16); "
            "~40 min on one core",
        ),
    ]
}


def patch_plan(preset: StudyPreset, out: Path, *, device: str = "cpu") -> list[Unit]:
    """The study's generate/train/audit units, then the periods page instead of the report."""
    units = [u for u in plan(preset, out, device=device) if u.stage != "report"]
    audits = [u for u in units if u.stage == "audit"]

    def periods() -> None:
        from symaudit.report.periods import write_periods_report

        write_periods_report([u.output for u in audits], out / "periods")

    units.append(
        Unit(
            "report",
            "periods",
            {"audits": [str(u.output.relative_to(out)) for u in audits]},
            [u.name for u in audits],
            out / "periods",
            1.0,
            periods,
            "period table + figure",
        )
    )
    return units


def patch_ablation(
    preset: str | StudyPreset,
    out: str | Path,
    *,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ReproduceResult:
    """Run (or resume) the patch-size ablation ``preset`` ("patches", "patches-micro" or a
    `StudyPreset` of ViTs) under ``out``; the page is ``out/periods/index.html``."""
    preset = named_preset(preset, PATCH_PRESETS)
    return run_planned(
        patch_plan,
        preset,
        out,
        "periods/index.html",
        device=device,
        progress=progress,
        log=log,
        title="patches",
    )
