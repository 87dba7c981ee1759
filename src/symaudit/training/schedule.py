"""Kept checkpoints: copies of the training state at scheduled optimiser steps.

A schedule spec is ``[UNIT:]RULE`` with UNIT ``steps`` (default) or ``epochs`` and RULE

- ``geometric`` or ``geometric:R`` — 0, 1, R, R², … (R > 1, default 2; rounded to whole
  units, duplicates dropped): dense early in training, where symmetry may be learned first;
- ``every:K`` — 0, K, 2K, …;
- ``A,B,C`` — exactly these points (``0`` is the untrained initialisation);

always cut at the end of the run (points beyond it are dropped, except that an explicit list
naming one is refused: a typo should not silently keep nothing). Epoch e means the state after
e whole epochs, i.e. optimiser step e × steps_per_epoch.

`KeptCheckpoints` puts the checkpoint of step s in ``RUN/checkpoints/step-<s>/checkpoint.pt``
(each a complete training checkpoint in its own directory, so every existing reader of
``RUN_DIR/checkpoint.pt`` — `load_checkpoint`, `run_audit` — takes it unchanged) and records
the schedule in ``RUN/checkpoints/schedule.json``. The run's own ``RUN/checkpoint.pt`` is not
affected. Kills: every kept file is written atomically; a run resumed from its last
checkpoint replays the steps after it and rewrites the kept checkpoints it passes (bitwise the
same on CPU), so after the resumed run the directory holds exactly the scheduled steps. A
resume with another schedule is refused (`CheckpointError`); a rerun without a schedule
continues the recorded one. A fresh start (no ``checkpoint.pt`` yet) removes kept
checkpoints that are not in its schedule (left by an earlier attempt that never got past
them).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from symaudit._io import atomic_write_json, read_tagged_json
from symaudit.training.checkpoint import CheckpointError

__all__ = [
    "KEPT_DIR",
    "CheckpointSchedule",
    "KeptCheckpoints",
    "kept_steps",
]

KEPT_DIR = "checkpoints"
_SCHEDULE_FILE = "schedule.json"
_FORMAT = "symaudit-kept-checkpoints-1"
_STEP_DIR = re.compile(r"step-(\d+)")


@dataclass(frozen=True)
class CheckpointSchedule:
    """A parsed schedule spec (module docstring): ``unit`` "steps"/"epochs", ``rule``
    "geometric"/"every"/"list", ``value`` the ratio R, the interval K or the tuple of points."""

    unit: str
    rule: str
    value: float | int | tuple[int, ...]
    spec: str

    @classmethod
    def parse(cls, spec: str) -> CheckpointSchedule:
        text = spec.strip()
        unit, sep, rest = text.partition(":")
        if sep and unit in ("steps", "epochs"):
            text = rest
        else:
            unit = "steps"
        bad = (
            f"checkpoint schedule {spec!r}: expected [steps:|epochs:]geometric[:R], "
            "every:K or a list like 0,1,5"
        )
        rule, _, arg = text.partition(":")
        if rule == "geometric":
            try:
                ratio = float(arg) if arg else 2.0
            except ValueError:
                raise ValueError(bad) from None
            if not (math.isfinite(ratio) and ratio > 1):
                raise ValueError(f"checkpoint schedule {spec!r}: the ratio must be > 1")
            return cls(unit, "geometric", ratio, spec)
        if rule == "every":
            if not arg.isdigit() or int(arg) < 1:
                raise ValueError(f"checkpoint schedule {spec!r}: every:K needs an integer K >= 1")
            return cls(unit, "every", int(arg), spec)
        parts = [p.strip() for p in text.split(",")]
        if not text or not all(p.isdigit() for p in parts):
            raise ValueError(bad)
        return cls(unit, "list", tuple(sorted({int(p) for p in parts})), spec)

    def points(self, last: int) -> list[int]:
        """The schedule's points (in its unit) from 0 to ``last`` inclusive."""
        if self.rule == "list":
            beyond = [p for p in self.value if p > last]
            if beyond:
                raise ValueError(
                    f"checkpoint schedule {self.spec!r}: {beyond} lie beyond the run's last "
                    f"{self.unit[:-1]} {last}"
                )
            return list(self.value)
        if self.rule == "every":
            return list(range(0, last + 1, int(self.value)))
        pts, x = {0}, 1.0
        while round(x) <= last:
            pts.add(round(x))
            x *= float(self.value)
        return sorted(pts)

    def steps(self, steps_per_epoch: int, total_steps: int) -> list[int]:
        """The optimiser steps at which a checkpoint is kept, sorted."""
        if self.unit == "epochs":
            return [e * steps_per_epoch for e in self.points(total_steps // steps_per_epoch)]
        return self.points(total_steps)


def kept_steps(run_dir: str | os.PathLike) -> dict[int, Path]:
    """Step → directory (holding ``checkpoint.pt``) of every kept checkpoint of a run."""
    root = Path(run_dir) / KEPT_DIR
    found = {}
    for d in root.glob("step-*") if root.is_dir() else []:
        m = _STEP_DIR.fullmatch(d.name)
        if m and (d / "checkpoint.pt").is_file():
            found[int(m[1])] = d
    return dict(sorted(found.items()))


class KeptCheckpoints:
    """Where and when `symaudit.training.train` keeps checkpoints (module docstring)."""

    def __init__(self, root: Path, steps: list[int], spec: str | None) -> None:
        self.root = root
        self.steps = frozenset(steps)
        self.spec = spec

    @classmethod
    def open(
        cls,
        run_dir: Path,
        keep: str | CheckpointSchedule | None,
        steps_per_epoch: int,
        total_steps: int,
        *,
        fresh: bool,
        write: bool = True,
    ) -> KeptCheckpoints:
        """The schedule of the run in ``run_dir``: ``keep`` (checked against a recorded one
        on resume) or the recorded one; ``fresh``: no checkpoint.pt yet (stale kept
        checkpoints are removed); ``write``: this process writes (DDP rank 0)."""
        root = Path(run_dir) / KEPT_DIR
        record = root / _SCHEDULE_FILE
        recorded = _read_record(record)
        if isinstance(keep, str):
            keep = CheckpointSchedule.parse(keep)
        if keep is None and recorded is not None:  # a rerun without the option continues it
            keep = CheckpointSchedule.parse(recorded["spec"])
        if keep is None:
            return cls(root, [], None)
        steps = keep.steps(steps_per_epoch, total_steps)
        if not fresh:
            if recorded is None:
                raise CheckpointError(
                    f"{run_dir}: the run was started without a checkpoint schedule, so the "
                    f"checkpoints of {keep.spec!r} before its last checkpoint are gone; "
                    "train into a new --out directory to keep them"
                )
            if recorded["steps"] != steps:
                raise CheckpointError(
                    f"{run_dir}: cannot resume with checkpoint schedule {keep.spec!r}, the run "
                    f"keeps {recorded['spec']!r} (steps {recorded['steps']}); use the same "
                    "schedule or a new --out directory"
                )
        if write:
            root.mkdir(parents=True, exist_ok=True)
            for tmp in root.glob("step-*/.checkpoint.pt.*.tmp"):  # left by a killed run
                tmp.unlink(missing_ok=True)
            if fresh:
                for step, d in kept_steps(run_dir).items():
                    if step not in steps:
                        shutil.rmtree(d)
            atomic_write_json(
                record,
                {
                    "format": _FORMAT,
                    "spec": keep.spec,
                    "steps": steps,
                    "steps_per_epoch": steps_per_epoch,
                    "total_steps": total_steps,
                },
            )
        return cls(root, steps, keep.spec)

    def due(self, step: int) -> bool:
        return step in self.steps

    def path(self, step: int) -> Path:
        return self.root / f"step-{step:08d}" / "checkpoint.pt"


def _read_record(path: Path) -> dict | None:
    return read_tagged_json(path, _FORMAT, CheckpointError, "checkpoint schedule")
