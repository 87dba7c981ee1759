"""Symmetry learning over training time: the same audit of every kept checkpoint of a run.

`audit_checkpoints(run_dir, groups, out=OUT, checkpoints="all")` audits the checkpoints a
run kept on its schedule (`symaudit.training.schedule`, ``RUN/checkpoints/step-*``) and the
run's own ``RUN/checkpoint.pt`` (unless a kept one has its step) with `run_audit`, each into
``OUT/step-<s>/`` — same groups, test mini-batches, damping rule (λ relative to each
checkpoint's own top eigenvalue of eta), solver settings and seeds for every checkpoint, so
the only thing that changes along the series is the weights. ``OUT/over_training.json``
lists the audited checkpoints (step, completed epochs, checkpoint SHA-256, the settings and
their digest) and the run's training-loss history. Resumable: a checkpoint already audited
with the same settings and the same checkpoint file is skipped without loading anything; a
killed audit of one checkpoint is resumed by `run_audit` itself.

`load_over_training(OUT)` reads it back; `training_curves` reduces every audit to per-step
medians per element (E_g, D_g, the Frobenius-normalised diagonal M^g_ii / ||M^g||_F and, if
computed, the cosine diagonal), and `milestones` answers *when* each quantity moves: the
first audited step at which it has covered half of its change from the first to the last
checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from symaudit._io import atomic_write_json, check_output_dir, read_tagged_json, tree_digests
from symaudit.diagnostics.audit import AuditError, AuditRecord, load_audit, settings_digest
from symaudit.diagnostics.audit import _settings as _audit_settings
from symaudit.diagnostics.settings import AuditSettings

__all__ = [
    "OVER_TRAINING_FILE",
    "OverTraining",
    "TrainingPoint",
    "audit_checkpoints",
    "load_over_training",
    "milestones",
    "select_checkpoints",
    "training_checkpoints",
    "training_curves",
]

OVER_TRAINING_FILE = "over_training.json"
_FORMAT = "symaudit-over-training-1"
# run_audit arguments that do not change its results (not part of the recorded settings)
_NOT_SETTINGS = {"device", "progress", "log", "process_group", "overwrite"}


@dataclass
class TrainingPoint:
    """One checkpoint of a run: optimiser ``step``, completed ``epoch``s, batches of the
    next epoch done (``batch``, mid-epoch checkpoints), the directory holding its
    ``checkpoint.pt`` and its label (the audit's sub-directory)."""

    step: int
    epoch: int
    batch: int
    run_dir: Path
    label: str


def training_checkpoints(run_dir: str | os.PathLike) -> list[TrainingPoint]:
    """The kept checkpoints of ``run_dir`` and its final ``checkpoint.pt``, by step."""
    from symaudit.training.checkpoint import CheckpointError, read_checkpoint
    from symaudit.training.schedule import kept_steps

    run = Path(run_dir)
    dirs = dict(kept_steps(run))
    points = []
    final = run / "checkpoint.pt"
    candidates = [*dirs.values(), run] if final.is_file() else list(dirs.values())
    for d in candidates:
        try:
            ck = read_checkpoint(d / "checkpoint.pt")
        except CheckpointError as exc:
            raise AuditError(f"cannot audit over training: {exc}") from exc
        step = int(ck["step"])
        if d == run and step in dirs:
            continue  # the final state is also a kept checkpoint
        points.append(TrainingPoint(step, int(ck["epoch"]), int(ck.get("batch", 0)), d, ""))
    if not points:
        raise AuditError(f"{run}: no checkpoint.pt and no kept checkpoints (train with --keep)")
    points.sort(key=lambda p: p.step)
    for p in points:
        p.label = f"step-{p.step:08d}"
    return points


def select_checkpoints(points: list[TrainingPoint], spec: str) -> list[TrainingPoint]:
    """``all``; ``every:K`` (every K-th checkpoint by step, and always the last); or a
    comma-separated list of steps, each of which must be a kept checkpoint."""
    spec = spec.strip()
    if spec == "all":
        return list(points)
    if spec.startswith("every:"):
        k = spec.partition(":")[2]
        if not k.isdigit() or int(k) < 1:
            raise AuditError(f"--checkpoints {spec!r}: every:K needs an integer K >= 1")
        chosen = points[:: int(k)]
        return chosen if chosen[-1] is points[-1] else [*chosen, points[-1]]
    parts = [s.strip() for s in spec.split(",")]
    if not all(p.isdigit() for p in parts):
        raise AuditError(f"--checkpoints {spec!r}: expected all, every:K or steps like 0,4,16")
    by_step = {p.step: p for p in points}
    missing = [int(s) for s in parts if int(s) not in by_step]
    if missing:
        raise AuditError(
            f"--checkpoints {spec!r}: no checkpoint at steps {missing}; the run has steps "
            f"{sorted(by_step)}"
        )
    return [by_step[s] for s in sorted({int(s) for s in parts})]


def _read_index(path: Path) -> dict | None:
    return read_tagged_json(path, _FORMAT, AuditError, "over-training audit index")


def _complete(audit_dir: Path) -> bool:
    try:
        meta = json.loads((audit_dir / "audit.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("complete"))


def audit_checkpoints(
    run_dir: str | os.PathLike,
    groups: Sequence[str] | AuditSettings,
    *,
    out: str | os.PathLike,
    checkpoints: str = "all",
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    process_group: object | None = None,
    **audit_kwargs: Any,
) -> Path:
    """Audit the selected checkpoints of ``run_dir`` (module docstring) into ``out``.

    ``groups``: an `AuditSettings`, or the group specs with its fields in ``audit_kwargs``
    (damping, rtol, test_batches, per_family, test_data, ...); the same settings serve every
    checkpoint (``audit_kwargs`` may also hold `run_audit`'s device and progress).
    ``overwrite``: redo checkpoints audited with other settings (else `AuditError`).
    Returns ``out``.
    """
    from symaudit.diagnostics.audit import run_audit
    from symaudit.training.checkpoint import read_checkpoint

    say = log or (lambda _m: None)
    rank = _rank(process_group)
    run = Path(run_dir)
    out = check_output_dir(out)
    if (out / "audit.json").exists():
        raise AuditError(f"{out} holds a single audit: give another --out for the checkpoints")
    points = select_checkpoints(training_checkpoints(run), checkpoints)
    audit, run_options = _split_settings(groups, audit_kwargs)
    settings = json.loads(json.dumps(audit.options(), default=str))  # as stored and read back
    digest = settings_digest(settings)
    index_path = out / OVER_TRAINING_FILE
    done = _audited(index_path, run, overwrite)
    final = read_checkpoint(run / "checkpoint.pt") if (run / "checkpoint.pt").is_file() else None
    entries = dict(done)
    for i, p in enumerate(points):
        sha = tree_digests(p.run_dir / "checkpoint.pt")["checkpoint.pt"]
        sub = out / p.label
        tag = f"[{i + 1}/{len(points)}] step {p.step} (epoch {p.epoch}, batch {p.batch})"
        if _up_to_date(done.get(p.label), sha, digest, sub):
            say(f"{tag}: already audited with these settings")
            continue
        say(f"{tag}: auditing {p.run_dir / 'checkpoint.pt'}")
        run_audit(
            p.run_dir,
            audit,
            out=sub,
            overwrite=overwrite,
            log=log,
            process_group=process_group,
            **run_options,
        )
        entries[p.label] = _index_entry(p, sha, digest)
        if rank == 0:  # the index after every checkpoint: a killed series keeps what it did
            _write_index(index_path, run, settings, digest, entries, final)
    if rank == 0:
        _write_index(index_path, run, settings, digest, entries, final)
    return out


def _rank(process_group: object | None) -> int:
    """This process's rank in ``process_group`` (0 without one): only rank 0 writes the index."""
    if process_group is None:
        return 0
    import torch.distributed as dist

    return dist.get_rank(process_group)


def _split_settings(
    groups: Sequence[str] | AuditSettings, audit_kwargs: dict[str, Any]
) -> tuple[AuditSettings, dict[str, Any]]:
    """(the audit's settings, `run_audit`'s other options) from ``audit_checkpoints``'s
    ``groups`` and keywords; validated here, before any checkpoint is audited."""
    run_options = {k: v for k, v in audit_kwargs.items() if k in _NOT_SETTINGS}
    fields_ = {k: v for k, v in audit_kwargs.items() if k not in _NOT_SETTINGS}
    return _audit_settings(groups, fields_), run_options


def _audited(index_path: Path, run: Path, overwrite: bool) -> dict[str, dict]:
    """The index's entries by label if it lists ``run``'s checkpoints (else none); an index
    of another run is an `AuditError` unless ``overwrite``."""
    index = _read_index(index_path) or {}
    if index and index.get("run") != str(run) and not overwrite:
        raise AuditError(
            f"{index_path.parent} holds the checkpoint audits of another run "
            f"({index.get('run')}); use another --out or --overwrite"
        )
    return {e["label"]: e for e in index.get("checkpoints", []) if index.get("run") == str(run)}


def _up_to_date(old: dict | None, sha: str, digest: str, audit_dir: Path) -> bool:
    """Whether a checkpoint's audit can be kept: indexed with the same checkpoint file and
    settings, and complete in ``audit_dir``."""
    if old and old["checkpoint_sha256"] == sha and old["settings_digest"] == digest:
        return _complete(audit_dir)
    return False


def _index_entry(p: TrainingPoint, sha: str, digest: str) -> dict[str, Any]:
    """The index's record of checkpoint ``p`` audited into ``OUT/<label>``."""
    return {
        "label": p.label,
        "step": p.step,
        "epoch": p.epoch,
        "batch": p.batch,
        "checkpoint": str(p.run_dir / "checkpoint.pt"),
        "checkpoint_sha256": sha,
        "settings_digest": digest,
        "audit": p.label,
    }


def _write_index(path: Path, run: Path, settings, digest, entries: dict, final) -> None:
    history = [
        {k: m.get(k) for k in ("epoch", "step", "train_loss", "val_one_step")}
        for m in (final["history"] if final is not None else [])
    ]
    atomic_write_json(
        path,
        {
            "format": _FORMAT,
            "run": str(run),
            "settings": settings,
            "settings_digest": digest,
            "checkpoints": sorted(entries.values(), key=lambda e: e["step"]),
            "history": history,
        },
    )


@dataclass
class OverTraining:
    """An over-training audit loaded back: the index and one `AuditRecord` per checkpoint
    (in step order; only checkpoints audited with the index's current settings)."""

    path: Path
    index: dict
    steps: list[int]
    epochs: list[int]
    audits: list[AuditRecord] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.audits[0].model

    @property
    def architecture(self) -> str:
        return self.audits[0].architecture

    @property
    def history(self) -> list[dict]:
        return list(self.index.get("history", []))


def load_over_training(path: str | os.PathLike) -> OverTraining:
    """Read ``PATH/over_training.json`` and every audit it lists (`AuditError` if one is
    missing or incomplete)."""
    d = Path(path)
    index = _read_index(d / OVER_TRAINING_FILE)
    if index is None:
        raise AuditError(f"{d}: no {OVER_TRAINING_FILE} (symaudit audit --checkpoints ...)")
    entries = [e for e in index["checkpoints"] if e["settings_digest"] == index["settings_digest"]]
    if not entries:
        raise AuditError(f"{d}: no checkpoint audited with the current settings")
    ot = OverTraining(d, index, [e["step"] for e in entries], [e["epoch"] for e in entries])
    ot.audits = [load_audit(d / e["audit"]) for e in entries]
    return ot


def _group_spec(rec: AuditRecord, group: str) -> str:
    """The audited spec of ``group`` (a spec text or a report group key such as "d4")."""
    from symaudit.report.findings import group_key

    for spec, eqs in rec.equivariance.items():
        if spec == group or group_key(spec, eqs[0].group) == group:
            return spec
    raise AuditError(f"{rec.path}: no audit of group {group!r}; have {list(rec.equivariance)}")


def training_curves(ot: OverTraining, group: str = "d4", damping: int = 0) -> dict[str, Any]:
    """Per checkpoint (rows, in step order) and element (columns) the median over all pooled
    test states of E_g, D_g, the Frobenius diagonal and the cosine diagonal (None if not
    computed), plus the mean over states and non-identity elements of log10 E_g and log10 D_g,
    and the median over them of each diagonal (``orbit_*``: one number per checkpoint, the
    quantities `milestones` times). ``damping``: 0 the main damping, j the j-th of the sweep.
    Also the checkpoints' test one-step SMSE (mean over families) and the training history."""
    import torch

    elements: list[str] | None = None
    inf_elements: list[str] | None = None
    rows: dict[str, list] = {k: [] for k in ("error", "defect", "frobenius", "cosine")}
    orbit: dict[str, list] = {k: [] for k in ("log_error", "log_defect", "frobenius", "cosine")}
    test_loss = []
    for rec in ot.audits:
        spec = _group_spec(rec, group)
        eqs = rec.equivariance[spec]
        infs = [
            [inf, *sw][damping]
            for inf, sw in zip(rec.influence[spec], rec.sweep[spec], strict=True)
        ]
        err = torch.cat([e.error for e in eqs], dim=1).numpy()  # (|G|, N)
        dfc = torch.cat([e.defect for e in eqs], dim=1).numpy()
        fro = torch.cat([r.diagonal("frobenius") for r in infs], dim=1).numpy()
        has_cos = all(r.transformed_norms is not None for r in infs)
        cos = torch.cat([r.diagonal("cosine") for r in infs], dim=1).numpy() if has_cos else None
        if elements is None:
            elements, inf_elements = list(eqs[0].elements), list(infs[0].elements)
        elif elements != list(eqs[0].elements) or inf_elements != list(infs[0].elements):
            raise AuditError(f"{rec.path}: other group elements than the first checkpoint's")
        rows["error"].append(np.median(err, axis=1).tolist())
        rows["defect"].append(np.median(dfc, axis=1).tolist())
        rows["frobenius"].append(np.median(fro, axis=1).tolist())
        rows["cosine"].append(None if cos is None else np.median(cos, axis=1).tolist())
        moved = [i for i, g in enumerate(elements) if g != "e"]
        imoved = [i for i, g in enumerate(inf_elements) if g != "e"]
        # floor: an exactly equivariant element has D_g = 0 (log of 0 would be -inf)
        orbit["log_error"].append(float(np.mean(np.log10(np.maximum(err[moved], 1e-30)))))
        orbit["log_defect"].append(float(np.mean(np.log10(np.maximum(dfc[moved], 1e-30)))))
        orbit["frobenius"].append(float(np.median(fro[imoved])))
        orbit["cosine"].append(None if cos is None else float(np.median(cos[imoved])))
        test_loss.append(rec.test_errors["all"]["one_step"])
    return {
        "model": ot.model,
        "architecture": ot.architecture,
        "group": group,
        "steps": ot.steps,
        "epochs": ot.epochs,
        "elements": elements,
        "influence_elements": inf_elements,
        "median": rows,
        "orbit": orbit,
        "test_one_step": test_loss,
        "history": ot.history,
    }


def _half_way(steps: list[int], values: list[float], direction: int) -> int | None:
    """First step at which ``values`` has covered half its change from the first to the
    last checkpoint, in ``direction`` (-1 falling, +1 rising); None if it moved the other
    way (or not at all)."""
    change = values[-1] - values[0]
    if not math.isfinite(change) or change * direction <= 0:
        return None
    half = values[0] + 0.5 * change
    for s, v in zip(steps, values, strict=True):
        if (v - half) * direction >= 0:
            return s
    return steps[-1]  # unreachable: the last value covers the whole change


def milestones(curves: dict[str, Any]) -> dict[str, Any]:
    """When each orbit quantity moved: the half-way step of the transformed error (mean log10
    E_g falling), the defect (mean log10 D_g falling) and the orbit coherence (median
    Frobenius and cosine diagonal rising), with the values at the first and last checkpoint
    and the extreme one (lowest error or defect, highest coherence) and its step.
    ``coherence_first``: whether coherence (cosine if computed, else Frobenius) reached its
    half-way point at an earlier checkpoint than the transformed error (None: a tie at the
    same checkpoint, or a quantity that did not move that way)."""
    steps, orbit = curves["steps"], curves["orbit"]
    out: dict[str, Any] = {}
    for key, direction in (
        ("log_error", -1),
        ("log_defect", -1),
        ("frobenius", +1),
        ("cosine", +1),
    ):
        vals = orbit[key]
        if any(v is None for v in vals):
            out[key] = None
            continue
        # the extreme (lowest error, highest coherence) and where: a transient the
        # first-to-last change hides (coherence that peaks early and then falls)
        k = int(np.argmax(np.asarray(vals) * direction))
        out[key] = {
            "first": vals[0],
            "last": vals[-1],
            "half_way_step": _half_way(steps, vals, direction),
            "extreme": vals[k],
            "extreme_step": steps[k],
        }
    coh = out["cosine"] or out["frobenius"]
    err = out["log_error"]
    first = None
    if coh and err and coh["half_way_step"] is not None and err["half_way_step"] is not None:
        a, b = coh["half_way_step"], err["half_way_step"]
        first = None if a == b else a < b
    out["coherence_measure"] = "cosine" if out["cosine"] else "frobenius"
    out["coherence_first"] = first
    return out
