"""symaudit.pipeline: the whole study as resumable stages (`symaudit reproduce`).

`reproduce(preset, out)` runs generate → train → audit → report for a `StudyPreset`
("micro", "demo", "paper" in `PRESETS`), skipping every unit whose settings and inputs are
unchanged since it last finished.
"""

from symaudit.pipeline.presets import PRESETS, ModelPlan, StudyPreset
from symaudit.pipeline.run import ReproduceResult, Unit, plan, reproduce

__all__ = ["PRESETS", "ModelPlan", "ReproduceResult", "StudyPreset", "Unit", "plan", "reproduce"]
