"""The training-time study: train with kept checkpoints, audit every one, draw the report.

`run_training_time("demo", out, data=DATA)` takes the models and training settings of a
`symaudit reproduce` study preset (the same `TrainConfig` its plan builds, so the final
checkpoint is the study's model), trains each with a checkpoint schedule
(`symaudit.training.schedule`), audits every kept checkpoint with the same settings
(`symaudit.diagnostics.over_training`) and writes the report
(`symaudit.report.training_time`) to ``OUT/report``. Without ``data`` the study's data are
generated into ``OUT/data`` first (its own resumable generation units). Every stage resumes:
training from its last checkpoint, audits skip the checkpoints already done, the report is
rebuilt from the audits.

Layout: ``OUT/runs/<model>-s<seed>/`` (run with ``checkpoints/``), ``OUT/audits/<model>-s<seed>/``
(one audit per checkpoint + ``over_training.json``), ``OUT/report/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from symaudit._io import atomic_write_json, check_output_dir

__all__ = ["TRAINING_TIME_PRESETS", "TrainingTimePreset", "run_training_time"]


@dataclass(frozen=True)
class TrainingTimePreset:
    """``study``: the `symaudit.pipeline.presets.PRESETS` entry whose data, models (those
    named in ``models``), training settings and test mini-batches are used; ``keep``: the
    checkpoint schedule; ``groups``, ``damping``, ``cosine``, ``per_family``: the audit of
    every checkpoint (one damping: the λ rule is the same relative fraction of each
    checkpoint's own top eigenvalue of eta)."""

    name: str
    study: str
    models: tuple[str, ...]
    keep: str
    groups: tuple[str, ...] = ("d4",)
    damping: str = "auto:1e-3"
    cosine: bool = True
    per_family: int | None = None  # test trajectories per mini-batch (None: the study's)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TRAINING_TIME_PRESETS: dict[str, TrainingTimePreset] = {
    p.name: p
    for p in [
        TrainingTimePreset(
            name="micro",
            study="micro",
            models=("unet-tiny", "vit-tiny"),
            keep="steps:0,4",
            groups=("c4",),
            cosine=False,
            description="seconds-scale smoke test (3 checkpoints per model, C4)",
        ),
        TrainingTimePreset(
            name="demo",
            study="demo",
            models=("unet-small", "vit-small"),
            # 0, 1, 4, 16, 64, 256 (, 1024) steps + the final checkpoint: 7 (UNet, 12 epochs)
            # and 8 (ViT, 40 epochs) audits, dense where training moves fastest
            keep="steps:geometric:4",
            # Measured on the untrained UNet (step 0): ~30 CG iterations per column at
            # lambda = 1e-3 x top eigenvalue (<= 17 for the trained demo models), 135 s of solves
            # per mini-batch of 8 on this loaded machine; the cosine needs |G| x N more
            # columns. So: the demo's second damping (1e-2), 4 trajectories per family-pure
            # mini-batch, Frobenius influence only.
            damping="auto:1e-2",
            per_family=4,
            cosine=False,
            description="CPU: the demo's UNet and ViT, D4 audits (Frobenius influence) of 7-8 "
            "checkpoints each (docs/training-time.md)",
        ),
    ]
}


def run_training_time(
    preset: str | TrainingTimePreset,
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run (or resume) the training-time study (module docstring); returns the report's
    index.html. ``data``: a directory with ``train/`` and ``test/`` dataset files of the
    study (e.g. ``symaudit reproduce``'s ``OUT/data``), read only."""
    from symaudit.diagnostics.over_training import audit_checkpoints
    from symaudit.pipeline.presets import PRESETS
    from symaudit.pipeline.run import plan
    from symaudit.report.training_time import build_training_time_report
    from symaudit.training import TrainConfig, train

    if isinstance(preset, str):
        if preset not in TRAINING_TIME_PRESETS:
            raise ValueError(
                f"unknown training-time preset {preset!r}; choose one of "
                f"{sorted(TRAINING_TIME_PRESETS)}"
            )
        preset = TRAINING_TIME_PRESETS[preset]
    study = PRESETS[preset.study]
    unknown = set(preset.models) - {m.preset for m in study.models}
    if unknown:
        raise ValueError(f"models {sorted(unknown)} are not in study preset {study.name!r}")
    say = log or (lambda _m: None)
    out = check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "preset.json", {**preset.to_dict(), "device": device})
    units = plan(study, out, device=device)
    if data is None:
        data = out / "data"
        for unit in units:
            if unit.stage == "generate":
                say(f"generate {unit.label}")
                unit.work()
    data = Path(data)
    for sub in ("train", "test"):
        if not (data / sub).is_dir():
            raise ValueError(f"{data / sub}: no such directory (the study's {sub} files)")
    mplan = {m.preset: m for m in study.models}
    audits = []
    for unit in units:
        if unit.stage != "train" or unit.settings["model"] not in preset.models:
            continue
        # the study's own training settings, on the given data
        cfg = TrainConfig.from_dict({**unit.settings, "data": [str(data / "train")]})
        name = Path(unit.output).name
        run_dir = out / "runs" / name
        say(f"train {name} keeping checkpoints at {preset.keep}")
        train(cfg, run_dir, progress=progress, keep=preset.keep, log=log)
        audit_dir = out / "audits" / name
        say(f"audit every kept checkpoint of {name} on {', '.join(preset.groups)}")
        audit_checkpoints(
            run_dir,
            list(preset.groups),
            out=audit_dir,
            checkpoints="all",
            damping=preset.damping,
            rtol=mplan[cfg.model].rtol,
            test_batches=study.test_batches,
            per_family=preset.per_family or study.per_family,
            test_data=[str(data / "test")],
            cosine=preset.cosine,
            max_iter=study.max_iter,
            rank=study.rank,
            device=device,
            progress=progress,
            log=log,
        )
        audits.append(audit_dir)
    return build_training_time_report(audits, out / "report")
