"""The staged, resumable study: generate → train → audit → report.

Every unit of work (one dataset file, one training run, one audit, the report) writes under
``OUT`` and records a manifest ``OUT/manifests/<unit>.json`` holding a digest of its settings
and of its inputs' digests, and the SHA-256 of every file it wrote. A unit whose manifest
digest matches and whose outputs are all there with those checksums is skipped; a unit whose
settings or inputs changed, or whose outputs were deleted, truncated or altered since, is
redone from scratch (its old outputs are removed first); a unit without a manifest (killed
mid-way) is resumed by the library function behind it (generation, training and audits are
all resumable), then its manifest is written.
So a killed `reproduce` continues where it stopped, and changing one setting redoes exactly
the units that depend on it.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from symaudit._io import atomic_write_json, check_output_dir, json_digest, tree_digests
from symaudit.pipeline.presets import PRESETS, ModelPlan, StudyPreset

if TYPE_CHECKING:
    from symaudit.diagnostics.settings import AuditSettings

__all__ = [
    "ReproduceResult",
    "Unit",
    "audit_unit",
    "plan",
    "reproduce",
    "named_preset",
    "run_planned",
    "run_units",
    "train_config",
]


@dataclass
class Unit:
    """One step of the study: ``stage`` (generate/train/audit/report), a name, its settings,
    the names of the units it reads, its output path (file or directory), a relative cost
    used for the ETA, and the function that does the work."""

    stage: str
    name: str
    settings: dict[str, Any]
    inputs: list[str]
    output: Path
    cost: float
    work: Callable[[], None]
    label: str = ""
    clean: list[Path] = field(default_factory=list)  # also removed when settings change


@dataclass
class ReproduceResult:
    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None


def _model_name(preset: str, seed: int) -> str:
    return f"{preset}-s{seed}"


def complete_shards(path: Path) -> int | None:
    """N if every shard ``path.shard-I-of-N`` (I < N) is there for some N, else None."""
    import re

    found: dict[int, set[int]] = {}
    for p in path.parent.glob(f"{path.name}.shard-*-of-*"):
        m = re.fullmatch(re.escape(path.name) + r"\.shard-(\d+)-of-(\d+)", p.name)
        if m:
            found.setdefault(int(m[2]), set()).add(int(m[1]))
    full = [n for n, got in found.items() if got == set(range(n))]
    return max(full) if full else None


def generate_shard(
    preset: StudyPreset, out: Path, shard: tuple[int, int], *, device: str = "cpu"
) -> list[Path]:
    """Generate shard I of N of every dataset file of the study (one array-job task); a
    later `reproduce` merges them (`complete_shards`) instead of generating."""
    from symaudit.data.generate import GenerationSettings, generate

    done = []
    for unit in plan(preset, out, device=device):
        if unit.stage != "generate":
            continue
        gs = GenerationSettings(**{**unit.settings, "device": device})
        if not unit.output.exists():
            done.append(generate(gs, unit.output, shard=shard, overwrite=True))
    return done


def plan(preset: StudyPreset, out: Path, *, device: str = "cpu") -> list[Unit]:
    """The study's units in execution order (every unit after the units it reads): the
    datasets (`_generate_units`), per model and seed a training run and its audit
    (`_train_unit`, `_audit_unit`), then the report (`_report_unit`)."""
    units = _generate_units(preset, out, device)
    train_inputs = [u.name for u in units if u.name.startswith("generate/train/")]
    test_inputs = [u.name for u in units if u.name.startswith("generate/test/")]
    shifts = _influence_shifts(preset)
    audits = []
    for mp in preset.models:
        for seed in preset.seeds:
            run_dir = out / "runs" / _model_name(mp.name or mp.preset, seed)
            units.append(_train_unit(preset, mp, seed, out, run_dir, train_inputs, device))
            units.append(_audit_unit(preset, mp, seed, out, run_dir, test_inputs, shifts, device))
            audits.append(units[-1].output)
    units.append(_report_unit(audits, out))
    return units


def _generate_units(preset: StudyPreset, out: Path, device: str) -> list[Unit]:
    """One unit per dataset file: training and test trajectories of every family."""
    from symaudit.data.generate import GenerationSettings, partial_path

    units = []
    for split, n, seed in (
        ("train", preset.train_trajectories, preset.data_seed),
        ("test", preset.test_trajectories, preset.data_seed + preset.test_seed_offset),
    ):
        for fam in preset.families:
            gs = GenerationSettings(
                kind=fam,
                trajectories=n,
                resolution=preset.resolution,
                snapshots=preset.snapshots,
                t_final=preset.t_final,
                seed=seed,
                device=device,
            )
            path = out / "data" / split / f"{fam}.h5"
            units.append(
                Unit(
                    stage="generate",
                    name=f"generate/{split}/{fam}",
                    settings=gs.fingerprint(),
                    inputs=[],
                    output=path,
                    cost=n * preset.resolution**2 * preset.snapshots / 2e6,
                    work=functools.partial(_generate, gs, path),
                    label=f"{split} {fam}",
                    clean=[partial_path(path)],
                )
            )
    return units


def _generate(gs, path: Path) -> None:
    """Generate one dataset file: nothing if a finished file of these settings is there,
    a merge if `reproduce --shard I/N` tasks wrote its shards, else a (resumed) generation."""
    import torch

    from symaudit.data import open_dataset
    from symaudit.data.generate import generate, merge_shards

    torch.set_flush_denormal(True)  # NOTES.md: denormals slow the solver >10x
    if path.exists():
        with open_dataset(path) as ds:
            same = ds.metadata.get("generation") == json.loads(json.dumps(gs.fingerprint()))
        if same:
            return  # finished before its manifest was written
    count = complete_shards(path)
    if count is not None:  # written by `reproduce --shard I/N` tasks
        merge_shards(gs, path, count, overwrite=path.exists())
        return
    # resumes OUT.partial if a killed run left one with these settings
    generate(gs, path, overwrite=path.exists())


def train_config(preset: StudyPreset, mp: ModelPlan, out: Path, seed: int, *, device: str = "cpu"):
    """The `TrainConfig` of model plan ``mp`` of ``preset`` with ``seed``, on ``out/data/train``."""
    from symaudit.training import TrainConfig

    return TrainConfig(
        model=mp.preset,
        data=[str(out / "data" / "train")],
        epochs=mp.epochs,
        seed=seed,
        batch_size=mp.batch_size,
        lr=mp.lr,
        val_fraction=preset.val_fraction,
        balance=preset.balance,
        device=device,
        model_overrides=dict(mp.overrides),
    )


def _train_unit(
    preset: StudyPreset,
    mp: ModelPlan,
    seed: int,
    out: Path,
    run_dir: Path,
    inputs: list[str],
    device: str,
) -> Unit:
    from symaudit.training import train

    cfg = train_config(preset, mp, out, seed, device=device)
    transitions = preset.train_trajectories * len(preset.families) * preset.snapshots
    return Unit(
        stage="train",
        name=f"train/{run_dir.name}",
        settings={**cfg.to_dict(), "data": ["data/train"]},
        inputs=inputs,
        output=run_dir,
        cost=mp.epochs * transitions * preset.resolution**2 / 4e6,
        work=lambda: train(cfg, run_dir, progress=False),
        label=f"{mp.name or mp.preset} seed {seed}",
    )


def _audit_unit(
    preset: StudyPreset,
    mp: ModelPlan,
    seed: int,
    out: Path,
    run_dir: Path,
    test_inputs: list[str],
    shifts: list[int],
    device: str,
) -> Unit:
    from symaudit.diagnostics.settings import AuditSettings

    audit = AuditSettings(
        groups=mp.audit_groups(preset),
        damping=preset.dampings[0],
        damping_sweep=preset.dampings[1:],
        rtol=mp.rtol,
        test_batches=preset.test_batches,
        per_family=preset.per_family,
        influence_shifts=shifts,
        cosine=preset.cosine,
        max_iter=preset.max_iter,
        rank=preset.rank,
    )
    n_groups = len(mp.audit_groups(preset))
    return audit_unit(
        run_dir.name,
        run_dir,
        out / "audits" / run_dir.name,
        audit,
        test_inputs,
        preset.test_batches * preset.per_family * n_groups * preset.resolution**2 / 5e3,
        f"{mp.name or mp.preset} seed {seed}",
        device=device,
    )


def audit_unit(
    name: str,
    run_dir: Path,
    audit_dir: Path,
    settings: AuditSettings | dict[str, Any],
    test_inputs: list[str],
    cost: float,
    label: str,
    *,
    device: str = "cpu",
) -> Unit:
    """The unit auditing run ``name`` (unit ``train/<name>``) with ``settings`` (an
    `AuditSettings` or its fields) on the study's test data ``audit_dir/../../data/test``
    (the generate units ``test_inputs``). Settings are validated here, before any unit runs."""
    from dataclasses import replace

    from symaudit.diagnostics.audit import run_audit
    from symaudit.diagnostics.settings import AuditSettings

    if isinstance(settings, dict):
        settings = AuditSettings(**settings)
    test_dir = audit_dir.parent.parent / "data" / "test"
    audit = replace(settings, test_data=[str(test_dir)])
    return Unit(
        stage="audit",
        name=f"audit/{name}",
        # the manifest's settings: run_audit's options but the (study-relative) test data
        settings=audit.options(exclude=("test_data", "metric_batch")),
        inputs=[f"train/{name}", *test_inputs],
        output=audit_dir,
        cost=cost,
        work=lambda: run_audit(run_dir, audit, out=audit_dir, device=device, overwrite=True),
        label=label,
    )


def _report_code(root: Path | None = None) -> str:
    """Digest of the report package's sources and templates (``root``: that package's
    directory): a report judged by other criteria is stale though its audits are not."""
    if root is None:
        import symaudit.report

        root = Path(symaudit.report.__file__).parent
    files = tree_digests(root)
    return json_digest({k: v for k, v in files.items() if k.endswith((".py", ".j2"))})


def _report_unit(audits: list[Path], out: Path) -> Unit:
    return Unit(
        stage="report",
        name="report",
        settings={"audits": [str(a.relative_to(out)) for a in audits], "code": _report_code()},
        inputs=[f"audit/{a.name}" for a in audits],
        output=out / "report",
        cost=1.0,
        work=lambda: _report(audits, out / "report"),
        label="figures + HTML",
    )


def _influence_shifts(preset: StudyPreset) -> list[int]:
    """The study-wide shift set of the influence audits (same for every model, so the
    architectures are compared at the same shifts), by rule from the models' periods."""
    from symaudit.diagnostics.shifts import influence_shift_set, natural_period
    from symaudit.models.registry import model_config

    periods = [natural_period(model_config(mp.preset, **mp.overrides)) for mp in preset.models]
    return influence_shift_set(periods, preset.resolution)


def _report(audits: list[Path], out: Path) -> None:
    from symaudit.report import build_report

    build_report(audits, out)


def _manifest_path(out: Path, unit: Unit) -> Path:
    return out / "manifests" / (unit.name.replace("/", "__") + ".json")


def _intact(output: Path, manifest: dict) -> bool:
    """The unit's outputs are all there, byte for byte as when its manifest was written
    (manifests from before checksums were recorded only require the output to exist)."""
    recorded = manifest.get("output_sha256")
    if not output.exists():
        return False
    return recorded is None or tree_digests(output) == recorded


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def reproduce(
    preset: str | StudyPreset,
    out: str | Path,
    *,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ReproduceResult:
    """Run (or resume) the study ``preset`` ("micro", "demo", "paper" or a `StudyPreset`)
    under ``out``; returns which units ran and which were skipped as unchanged."""
    preset = named_preset(preset, PRESETS)
    return run_planned(
        plan, preset, out, "report/index.html", device=device, progress=progress, log=log
    )


def named_preset(preset, presets: dict):
    """``preset`` itself, or the preset of that name in ``presets`` (else a ValueError
    naming the choices)."""
    if not isinstance(preset, str):
        return preset
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    return presets[preset]


def run_planned(
    plan_fn: Callable[..., list[Unit]],
    preset,
    out: str | Path,
    page: str,
    *,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    title: str = "reproduce",
) -> ReproduceResult:
    """Plan ``preset``'s units with ``plan_fn(preset, out, device=)`` (which validates every
    setting, so nothing is written before), record ``out/preset.json``, run the units
    (`run_units`); the result's report is ``out/page``."""
    out = check_output_dir(out)
    units = plan_fn(preset, out, device=device)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "preset.json", {**preset.to_dict(), "device": device})
    result = run_units(units, out, progress=progress, log=log, title=title)
    result.report = out / page
    return result


def run_units(
    units: list[Unit],
    out: Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    title: str = "reproduce",
) -> ReproduceResult:
    """Run ``units`` (in order, each after the units it reads) under ``out`` with the manifest
    rules of the module docstring: skip the unchanged, redo the changed, resume the killed."""
    from symaudit._progress import progress_bar

    result = ReproduceResult(out=out)
    digests: dict[str, str] = {}
    say = log or (lambda _m: None)
    bar = progress_bar(progress, count=False, stderr=True)
    with bar:
        task = bar.add_task(title, total=sum(u.cost for u in units))
        for i, unit in enumerate(units):
            digest = json_digest([unit.settings, [digests[n] for n in unit.inputs]])
            digests[unit.name] = digest
            mpath = _manifest_path(out, unit)
            old = json.loads(mpath.read_text()) if mpath.exists() else None
            desc = f"[{i + 1}/{len(units)}] {unit.stage}: {unit.label}"
            if old and old.get("digest") == digest and _intact(unit.output, old):
                result.skipped.append(unit.name)
                bar.update(task, advance=unit.cost, description=desc + " (unchanged)")
                continue
            if old:
                changed = "settings or inputs" if old.get("digest") != digest else "outputs"
                say(f"{unit.name}: {changed} changed since its manifest, redoing it")
                for p in [unit.output, *unit.clean]:
                    _remove(p)
            mpath.unlink(missing_ok=True)
            bar.update(task, description=desc)
            say(f"{desc} ...")
            t0, c0 = time.perf_counter(), time.process_time()
            unit.work()
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            atomic_write_json(
                mpath,
                {
                    "unit": unit.name,
                    "digest": digest,
                    "settings": unit.settings,
                    "inputs": {n: digests[n] for n in unit.inputs},
                    "output": str(unit.output.relative_to(out)),
                    "output_sha256": tree_digests(unit.output),
                    "seconds": seconds,
                    "cpu_seconds": cpu,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )
            result.ran.append(unit.name)
            result.seconds[unit.name] = seconds
            say(f"{unit.name}: done in {seconds:.1f} s")
            bar.update(task, advance=unit.cost)
    return result
