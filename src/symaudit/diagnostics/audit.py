"""Audit of one training run: equivariance errors and influence along group orbits.

`run_audit(run_dir, groups, out=AUDIT_DIR)` rebuilds the model from ``RUN_DIR/checkpoint.pt``,
picks test transitions and, for every group and every test mini-batch, saves

    AUDIT_DIR/<group>/batch<k>/equivariance.pt   (`EquivarianceResult`: E_g, D_g per state)
    AUDIT_DIR/<group>/batch<k>/influence.pt      (`InfluenceResult` at the chosen damping)
    AUDIT_DIR/<group>/batch<k>/sweep-<j>.pt      (one per damping of a sweep, if asked)

plus ``AUDIT_DIR/test_errors.json`` (one-step and rollout SMSE of the model on every test
trajectory next to the persistence forecast x_t+1 = x_t) and ``AUDIT_DIR/audit.json`` (the run,
the model, every setting, and the list of pieces). Every file is written atomically; a rerun
with the same settings skips the pieces already on disk, so a killed audit redoes only what is
missing. A rerun with other settings is refused (`AuditError`) unless ``overwrite=True``;
then the new audit is built in ``AUDIT_DIR.partial`` and replaces the old one as a whole only
when complete, so an interrupted overwrite leaves the old audit intact (and resumes).

Test transitions (the paper's protocol). The test trajectories are either given files
(``test_data``: one file per initial-condition family) or the trajectories the run held out
for validation. As in the paper ("three test mini-batches comprising full trajectories for each
of the three training-time classes"), every mini-batch holds ``per_family`` = N trajectories of
*one* family; ``test_batches`` such batches per family, disjoint (batch k of family f: its
trajectories kN .. (k+1)N-1). With the default metric batch "test", eta comes from that same
mini-batch, so M^g and its Frobenius norm never mix families whose gradients differ by 10^5.
Within a trajectory the
transition depends on the group: D4 (and any non-translation group) at the first step of the
rollout (x_0, x_1); translations at the latest time that is not on the boundary of the
training window, i.e. (x_{t_-2}, x_{t_-1}) with t_-1 the last snapshot used in training.

Defaults: rtol 5e-3 for UNet and G-CNN, 5e-2 for the ViT (the paper's); damping "auto" =
`DEFAULT_RELATIVE_DAMPING` (1e-3) times the top eigenvalue of eta (see
`symaudit.diagnostics.influence`); `DAMPING_SWEEP` the relative dampings of ``--damping-sweep``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from symaudit._io import (
    atomic_write_json,
    check_output_dir,
    file_sha256,
    json_digest,
    prepare_stage,
    replace_dir,
    staging_path,
)
from symaudit.diagnostics.settings import (
    DAMPING_SWEEP,
    AuditSettings,
    InfluenceSettings,
    default_rtol,
)
from symaudit.errors import SymauditError
from symaudit.training.checkpoint import CHECKPOINT_NAME
from symaudit.training.loss import SMSE

__all__ = [
    "DAMPING_SWEEP",
    "AuditError",
    "AuditRecord",
    "AuditSettings",
    "default_rtol",
    "load_audit",
    "run_audit",
    "settings_digest",
]

AUDIT_FORMAT = "symaudit-audit-2"  # 2: one family per mini-batch
#: SHA-256 (16 hex digits) of the canonical JSON of settings (the resume digest)
settings_digest = json_digest


class AuditError(SymauditError, RuntimeError):
    """An audit cannot run or resume (missing run, conflicting settings, too little data)."""


def _group_dir(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


@dataclass
class _TestSet:
    """Full test trajectories per family `(n_f, T, C, H, W)` on the training window."""

    families: dict[str, torch.Tensor]
    sources: dict[str, dict]
    times: torch.Tensor

    def batch(
        self, fam: str, k: int, per_family: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mini-batch k of family ``fam``: its trajectories k*N .. (k+1)*N-1 at ``step``."""
        traj = self.families[fam]
        sel = traj[k * per_family : (k + 1) * per_family]
        if sel.shape[0] < per_family:
            raise AuditError(
                f"family {fam!r} has {traj.shape[0]} test trajectories, too few for "
                f"batch {k + 1} of {per_family}"
            )
        return sel[:, step].contiguous(), sel[:, step + 1].contiguous()


def _load_test_set(ckpt: dict, test_data: Sequence[str | os.PathLike] | None) -> _TestSet:
    from symaudit.data.store import DatasetError, open_dataset
    from symaudit.data.transitions import expand_paths, parse_snapshots

    cfg = ckpt["config"]
    sel = parse_snapshots(cfg.get("snapshots"))
    if test_data:
        files = [(p, None) for p in expand_paths(list(test_data))]
    else:
        split = ckpt.get("split") or {}
        if not split:
            raise AuditError("the checkpoint records no data split; pass test_data")
        files = [(Path(p), va) for p, (_, va) in split.items()]
    families: dict[str, list[torch.Tensor]] = {}
    sources: dict[str, dict] = {}
    grids: dict[str, tuple[int, int]] = {}
    times = None
    for path, ids in files:
        try:
            with open_dataset(path) as ds:
                idx = list(range(ds.num_snapshots))
                idx = idx[sel] if sel is not None else idx
                ids = list(range(ds.num_trajectories)) if ids is None else list(ids)
                if not ids:
                    raise AuditError(f"{path}: the run held out no trajectories; pass test_data")
                fam = str(ds.metadata.get("ic_kind", path.stem))
                families.setdefault(fam, []).append(ds.read(ids, idx))
                sources.setdefault(fam, {"files": [], "trajectories": []})
                sources[fam]["files"].append(str(path))
                sources[fam]["trajectories"].append(ids)
                t = ds.times[torch.tensor(idx)]
                times = t if times is None else times
                grids[str(path)] = ds.resolution
        except DatasetError as exc:
            raise AuditError(f"cannot read test data: {exc}") from exc
    _check_grids(grids, ckpt)
    if times is None or times.numel() < 3:
        raise AuditError("test trajectories need at least 3 snapshots in the training window")
    return _TestSet({f: torch.cat(v) for f, v in families.items()}, sources, times)


def _check_grids(grids: dict[str, tuple[int, int]], ckpt: dict) -> None:
    """Test trajectories must share one grid, the one the model was trained on (a model run
    at another resolution sees other physics per pixel: its errors would not be comparable)."""
    from symaudit.data.store import DatasetError, open_dataset

    train = None
    for path in ckpt.get("split") or {}:
        try:
            with open_dataset(path) as ds:
                train = (str(path), ds.resolution)
                break
        except DatasetError:
            continue  # moved since training: nothing to compare with
    if not grids:
        return
    expected = train or next(iter(grids.items()))
    for path, grid in grids.items():
        if grid != expected[1]:
            raise AuditError(
                f"test data {path} is on a {grid[0]}x{grid[1]} grid but "
                f"{'the run was trained on' if train else 'the other test data are on'} "
                f"{expected[1][0]}x{expected[1][1]} ({expected[0]}): generate test data at "
                "the training resolution"
            )


def _metric_batch(spec: str, ckpt: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``"test"`` → None (the test batch itself); ``"train:N"`` (checked by `AuditSettings`)
    → N training transitions drawn (seeded) from the run's own training trajectories."""
    if spec == "test":
        return None
    num = spec.partition(":")[2]
    from symaudit.data.store import open_dataset
    from symaudit.data.transitions import parse_snapshots

    n = int(num)
    sel = parse_snapshots(ckpt["config"].get("snapshots"))
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    files = list((ckpt.get("split") or {}).items())
    if not files:
        raise AuditError("the checkpoint records no data split: cannot draw training states")
    _check_metric_size(n, files, sel)
    for i in range(n):
        path, (train_ids, _) = files[i % len(files)]
        with open_dataset(path) as ds:
            idx = list(range(ds.num_snapshots))
            idx = idx[sel] if sel is not None else idx
            traj = train_ids[int(torch.randint(len(train_ids), (1,), generator=gen))]
            t = int(torch.randint(len(idx) - 1, (1,), generator=gen))
            pair = ds.read([traj], [idx[t], idx[t + 1]])[0]
        xs.append(pair[0])
        ys.append(pair[1])
    return torch.stack(xs), torch.stack(ys)


def _check_metric_size(n: int, files: list, sel: slice | None) -> None:
    """The draw is with replacement: more states than distinct transitions would repeat some
    and weight them twice in eta, silently."""
    from symaudit.data.store import DatasetError, open_dataset

    distinct = 0
    for path, (train_ids, _) in files:
        try:
            with open_dataset(path) as ds:
                steps = len(
                    range(ds.num_snapshots)[sel] if sel is not None else range(ds.num_snapshots)
                )
        except DatasetError as exc:
            raise AuditError(f"cannot read training data for the metric batch: {exc}") from exc
        distinct += len(train_ids) * max(steps - 1, 0)
    if n > distinct:
        raise AuditError(
            f"metric batch train:{n} asks for more states than the {distinct} distinct "
            f"training transitions of the run: use at most train:{distinct}"
        )


def _test_errors(model, loss, test: _TestSet) -> dict:
    """One-step and rollout SMSE per family next to the persistence forecast x_t+1 = x_t."""
    from symaudit.training import evaluate

    out: dict[str, dict] = {}
    for fam, traj in test.families.items():
        ev = evaluate(model, traj, loss)
        pers_step = loss.per_sample(traj[:, :-1], traj[:, 1:]).double()  # (n, T-1)
        pers_roll = loss.per_sample(traj[:, :1].expand_as(traj[:, 1:]), traj[:, 1:]).double()
        out[fam] = {
            "trajectories": int(traj.shape[0]),
            "one_step": ev["one_step"],
            "rollout": ev["rollout"],
            "persistence_one_step": float(pers_step.mean()),
            "persistence_rollout": pers_roll.mean(0).tolist(),
        }
    _require_finite_errors(out)
    one = [v["one_step"] for v in out.values()]
    per = [v["persistence_one_step"] for v in out.values()]
    out["all"] = {
        "one_step": sum(one) / len(one),
        "persistence_one_step": sum(per) / len(per),
        "note": "means over families of the per-family means over all transitions",
    }
    return out


def _require_finite_errors(errors: dict[str, dict]) -> None:
    """A model whose predictions are NaN/inf (diverged training, corrupt weights) has nothing
    to audit: say so instead of writing NaN results or failing deep inside a solver."""
    for fam, v in errors.items():
        if not math.isfinite(v["one_step"]):
            raise AuditError(
                f"the model's one-step predictions on the {fam!r} test trajectories are not "
                f"finite (SMSE {v['one_step']}): the checkpoint holds a diverged or corrupt model"
            )


def _require_finite_transformed(eq, tag: str) -> None:
    """Finite on the test states but not on a transformed one: refuse, naming the element,
    rather than store NaN errors (a model can diverge on inputs it never saw)."""
    bad = ~(torch.isfinite(eq.error) & torch.isfinite(eq.defect)).all(dim=1)
    if bad.any():
        names = [eq.elements[i] for i in bad.nonzero().flatten().tolist()]
        raise AuditError(
            f"{tag}: the model's predictions on inputs transformed by {names[:5]} are not "
            "finite: nothing to audit for those elements"
        )


@dataclass
class AuditRecord:
    """An audit directory loaded back: ``meta`` (audit.json), ``test_errors``, and per group
    spec the lists (one item per test batch) of equivariance and influence results."""

    path: Path
    meta: dict
    test_errors: dict
    equivariance: dict[str, list] = field(default_factory=dict)
    influence: dict[str, list] = field(default_factory=dict)
    sweep: dict[str, list[list]] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.meta["model"]["preset"]

    @property
    def architecture(self) -> str:
        return self.meta["model"]["architecture"]

    @property
    def seed(self) -> int:
        return int(self.meta["run"]["seed"])

    @property
    def settings(self) -> AuditSettings:
        """The `AuditSettings` the audit was made with (test data: the files it read)."""
        return AuditSettings.from_record(self.meta["settings"])


def load_audit(audit_dir: str | os.PathLike) -> AuditRecord:
    """Load every piece listed in ``AUDIT_DIR/audit.json``; `AuditError` if one is missing."""
    from symaudit.diagnostics.equivariance import EquivarianceResult
    from symaudit.diagnostics.influence import InfluenceResult

    d = Path(audit_dir)
    try:
        meta = json.loads((d / "audit.json").read_text())
        test_errors = json.loads((d / "test_errors.json").read_text())
    except (OSError, ValueError) as exc:
        raise AuditError(f"{d} is not a complete audit directory: {exc}") from exc
    if meta.get("format") != AUDIT_FORMAT or not meta.get("complete"):
        raise AuditError(f"{d}: audit.json is not a complete {AUDIT_FORMAT} audit")
    rec = AuditRecord(d, meta, test_errors)
    try:
        for spec, pieces in meta["pieces"].items():
            rec.equivariance[spec] = [
                EquivarianceResult.load(d / p["equivariance"]) for p in pieces
            ]
            rec.influence[spec] = [InfluenceResult.load(d / p["influence"]) for p in pieces]
            rec.sweep[spec] = [[InfluenceResult.load(d / s) for s in p["sweep"]] for p in pieces]
    except (ValueError, KeyError, OSError) as exc:
        raise AuditError(f"{d}: cannot load audit piece: {exc}") from exc
    return rec


def run_audit(
    run_dir: str | os.PathLike,
    groups: Sequence[str] | AuditSettings,
    *,
    out: str | os.PathLike,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    process_group: object | None = None,
    **options: Any,
) -> Path:
    """Audit the run in ``run_dir`` for each group spec (e.g. "d4", "shift-x", "shift-y:4").

    Args:
        groups: an `AuditSettings`, or `symaudit.groups.from_spec` strings with the other
            settings as ``options`` (the fields of `AuditSettings`: damping, damping_sweep,
            rtol, test_batches, per_family, influence_shifts, test_data, metric_batch,
            max_iter, rank, cosine). Translations are audited late in the window, every
            other group at the first step (module docstring). The settings are validated
            before anything is read or written.
        out: the audit directory (created).
        device: where the model and solves run.
        overwrite: replace an audit of other settings in ``out``.
        progress, log: solver progress bars; a callable receiving progress lines.
        process_group: a torch.distributed group (e.g. ``dist.group.WORLD`` under torchrun,
            `symaudit audit --nproc K`): every rank runs this call, the metric batch is
            sharded over the ranks (each holds states r, r + K, ...; eta V is all-reduced)
            and only rank 0 writes ``out``.

    Returns the audit directory. Influence solves that do not converge warn
    (`ConvergenceWarning`) and are recorded per column in the result files.
    """
    settings = _settings(groups, options)
    rank_, world = _ranks(process_group)
    say = (log if rank_ == 0 else None) or (lambda _m: None)
    run, out = Path(run_dir), check_output_dir(out)
    source = _load_run(run, device, say)
    settings = settings.with_rtol(source.info.model_config["architecture"])
    test = _load_test_set(source.raw, settings.test_data)
    jobs = _build_groups(settings, source.info.layout, test)
    seed = int(source.info.config.get("seed", 0))
    mbatch = _metric_batch(settings.metric_batch, source.raw, seed=seed)
    meta = _audit_meta(source, settings, test, device, world)
    final = out
    if rank_ == 0:
        out = _build_dir(out, meta["settings_digest"], meta["settings"], overwrite)
    else:  # the other ranks compute alongside rank 0 and write nothing that is kept
        out = Path(tempfile.mkdtemp(prefix=f"symaudit-rank{rank_}-"))
    atomic_write_json(out / "audit.json", meta)
    loss = SMSE(source.info.channel_rms).to(device)
    if rank_ == 0 and not (out / "test_errors.json").exists():
        say("test errors vs persistence")
        atomic_write_json(out / "test_errors.json", _test_errors(source.model, loss, test))
    solve = _Solve(
        settings.influence(),
        progress=progress and rank_ == 0,
        process_group=process_group,
    )
    meta["pieces"] = _audit_batches(
        source.model, loss, test, jobs, settings, mbatch, out, say, solve
    )
    meta["complete"] = True
    atomic_write_json(out / "audit.json", meta)
    if rank_ != 0:
        shutil.rmtree(out, ignore_errors=True)
    elif out != final:
        replace_dir(out, final)
    return final


def _settings(groups: Sequence[str] | AuditSettings, options: dict[str, Any]) -> AuditSettings:
    if isinstance(groups, AuditSettings):
        if options:
            raise TypeError(f"pass either AuditSettings or options, not both: {sorted(options)}")
        return groups
    return AuditSettings(groups=groups, **options)


@dataclass(frozen=True)
class _Source:
    """The audited run: its checkpoint (as read), the rebuilt model and what it records."""

    checkpoint: Path
    raw: dict
    model: torch.nn.Module
    info: Any  # symaudit.training.CheckpointInfo


def _load_run(run: Path, device: str | torch.device, say: Callable[[str], None]) -> _Source:
    from symaudit.training import load_checkpoint
    from symaudit.training.checkpoint import CheckpointError, read_checkpoint

    ckpt_path = run / CHECKPOINT_NAME
    try:
        raw = read_checkpoint(ckpt_path)
        model, info = load_checkpoint(ckpt_path, map_location=device)
    except CheckpointError as exc:
        raise AuditError(f"cannot audit {run}: {exc}") from exc
    if info.epoch < int(info.config.get("epochs", info.epoch)):
        say(f"warning: {run} is trained for {info.epoch}/{info.config['epochs']} epochs only")
    return _Source(ckpt_path, raw, model, info)


@dataclass(frozen=True)
class _Job:
    """One audited group: the whole group (errors), its influence elements, and the time
    index of the test transitions it is audited on."""

    spec: str
    group: Any  # symaudit.groups.Group
    influence_group: Any
    step: int


def _build_groups(settings: AuditSettings, layout, test: _TestSet) -> dict[str, _Job]:
    """Every group of the audit built once, before anything is computed."""
    from symaudit.groups import from_spec, is_translation

    resolution = tuple(next(iter(test.families.values())).shape[-2:])
    dt = float(test.times[1] - test.times[0])
    jobs = {}
    for spec in settings.groups:
        group = from_spec(spec, layout, resolution=resolution, dt=dt)
        step = test.times.numel() - 2 if is_translation(group) else 0
        inf_group = _influence_elements(group, settings.influence_shifts)
        jobs[spec] = _Job(spec, group, inf_group, step)
    return jobs


def _audit_meta(
    source: _Source, settings: AuditSettings, test: _TestSet, device, world: int
) -> dict[str, Any]:
    """The content of ``audit.json`` for a run of ours (pieces added when complete)."""
    info = source.info
    ckpt_digest = file_sha256(source.checkpoint)[:16]
    run = {
        "dir": str(source.checkpoint.parent),
        "checkpoint_sha256": ckpt_digest,
        "epochs": info.epoch,
        "seed": int(info.config.get("seed", 0)),
        "config": info.config,
    }
    num = sum(p.numel() for p in source.model.parameters())
    model = {**info.model_config, "num_parameters": num}
    record = settings.record(test.sources)
    return _meta(run, model, record, ckpt_digest, device, test, processes=world)


def _meta(run: dict, model: dict, record: dict, identity: str, device, test: _TestSet, **extra):
    """``audit.json``: the run and model, the settings and their digest together with the
    model's ``identity`` (checkpoint or weights digest), the test times and families."""
    return {
        "format": AUDIT_FORMAT,
        "run": run,
        "model": model,
        "settings": record,
        "settings_digest": json_digest([record, identity]),
        "device": str(device),
        "times": test.times.tolist(),
        # families of the test data; each mini-batch is one of them (pieces' "family")
        "families": list(test.families),
        **extra,
        "complete": False,
    }


@dataclass(frozen=True)
class _Solve:
    """How every influence computation of an audit runs."""

    settings: InfluenceSettings
    progress: bool = False
    process_group: object | None = None


def _audit_batches(
    model,
    loss,
    test: _TestSet,
    jobs: dict[str, _Job],
    settings: AuditSettings,
    mbatch,
    out: Path,
    say,
    solve: _Solve,
) -> dict[str, list[dict]]:
    """Every (family, mini-batch, cluster of groups): errors and influence, skipping pieces
    on disk. Returns the pieces per group spec, as listed in ``audit.json``."""
    pieces: dict[str, list[dict]] = {spec: [] for spec in jobs}
    clusters = _solve_clusters({spec: j.group for spec, j in jobs.items()})
    fams = list(test.families)
    total, done = len(clusters) * settings.test_batches * len(fams), 0
    sweeps = len(settings.damping_sweep)
    for fam in fams:
        for k in range(settings.test_batches):
            for cluster in clusters:
                done += 1
                step = jobs[cluster[0]].step
                work = []
                for spec in cluster:
                    job = jobs[spec]
                    piece = _piece(spec, fam, k, sweeps, job.influence_group, step, test.times)
                    pieces[spec].append(piece)
                    work.append((spec, job.group, job.influence_group, piece))
                batch = test.batch(fam, k, settings.per_family, step)
                tag = f"[{done}/{total}] {'+'.join(cluster)} {fam} batch {k + 1}"
                tag += f" (t = {float(test.times[step]):.3g})"
                _audit_pieces(model, loss, batch, work, mbatch, out, tag, say, solve)
    return pieces


def _ranks(process_group) -> tuple[int, int]:
    if process_group is None:
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(process_group), dist.get_world_size(process_group)


def _agree(process_group, value: bool) -> bool:
    """Rank 0's ``value`` on every rank (decisions that gate collective operations must be
    the same everywhere; only rank 0 sees the audit directory)."""
    if process_group is None:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=dist.get_global_rank(process_group, 0), group=process_group)
    return bool(box[0])


def _shard(batch, process_group):
    """This rank's part of a metric batch: states r, r + K, ... of K ranks."""
    rank, world = _ranks(process_group)
    if world == 1:
        return batch
    if batch[0].shape[0] < world:
        raise AuditError(
            f"a metric batch of {batch[0].shape[0]} states cannot be sharded over {world} "
            "processes: use fewer processes or a larger batch"
        )
    return batch[0][rank::world], batch[1][rank::world]


def _piece(spec: str, fam: str, k: int, sweeps: int, inf_group, step: int, times) -> dict:
    """Where mini-batch k of family ``fam`` of group ``spec`` is stored, and what it holds."""
    where = Path(_group_dir(spec)) / f"{_group_dir(fam)}-batch{k}"
    return {
        "family": fam,
        "batch": k,
        "equivariance": str(where / "equivariance.pt"),
        "influence": str(where / "influence.pt"),
        "sweep": [str(where / f"sweep-{j}.pt") for j in range(sweeps)],
        "influence_elements": [g.name for g in inf_group],
        "time_index": step,
        "time": float(times[step]),
    }


def _digest_in(directory: Path) -> str | None:
    try:
        return json.loads((directory / "audit.json").read_text()).get("settings_digest")
    except (OSError, ValueError, AttributeError):
        return None


def _build_dir(out: Path, digest: str, settings: dict, overwrite: bool) -> Path:
    """Where this audit is written: ``out`` itself when it is new or holds this very audit
    (resumed in place); with ``overwrite``, ``out.partial`` beside an audit of other
    settings, which stays whole until the new one replaces it (a partial build of these
    settings there is resumed)."""
    if not (out / "audit.json").exists() or _digest_in(out) == digest:
        return out
    if not overwrite:
        try:
            old = json.loads((out / "audit.json").read_text()).get("settings", {})
        except (OSError, ValueError, AttributeError):
            old = {}
        diff = [k for k in settings if old.get(k) != settings[k]]
        raise AuditError(
            f"{out} holds an audit with other settings or another checkpoint "
            f"(differs in: {', '.join(diff) or 'checkpoint'}); use another --out or "
            "--overwrite"
        )
    return prepare_stage(out, keep=_digest_in(staging_path(out)) == digest)


def _influence_elements(group, shifts: Sequence[int] | None):
    """The elements whose influence is computed: for a translation group with ``shifts``
    given, those whose shift (along the group's axis) is in it; else the whole group."""
    from symaudit.groups import is_translation

    if shifts is None or not is_translation(group):
        return group
    keep = {int(s) for s in shifts} | {0}
    return group.subset([g.name for g in group if all(c in keep for c in g.shift)])


def _solve_clusters(groups: dict[str, Any]) -> list[list[str]]:
    """Group specs (keys of ``groups``: spec -> `Group`) whose influence shares one
    computation: all translation groups (audited on the same states, so one Nyström sketch
    and one test solve serve them all); every other group alone."""
    from symaudit.groups import is_translation

    shifts = [spec for spec, g in groups.items() if is_translation(g)]
    alone = [[spec] for spec, g in groups.items() if not is_translation(g)]
    return alone + ([shifts] if shifts else [])


def _audit_pieces(model, loss, batch, jobs: list, mbatch, out: Path, tag: str, say, solve: _Solve):
    """For one mini-batch: equivariance errors of each job's whole group, then influence on
    the union of the jobs' influence elements in one `influence_sweep` (each skipped if on
    disk), split back into one result per group. The first group's result carries the
    solver reports and solve time; the others record that they share it."""
    from symaudit.diagnostics.equivariance import EquivarianceResult, equivariance_error
    from symaudit.diagnostics.influence import InfluenceResult, influence_sweep

    pg = solve.process_group
    writer = _ranks(pg)[0] == 0  # forward errors need no other rank: rank 0 alone
    for spec, group, _, piece in jobs:
        if writer and not _loads(EquivarianceResult, out / piece["equivariance"]):
            say(f"{tag}: {spec} equivariance errors over {len(group)} elements")
            eq = equivariance_error(model, batch, group, loss)
            _require_finite_transformed(eq, tag)
            eq.save(out / piece["equivariance"])
    need = [out / p for *_, piece in jobs for p in (piece["influence"], *piece["sweep"])]
    if _agree(pg, all(_loads(InfluenceResult, p) for p in need)):
        say(f"{tag}: influence already on disk")
        return
    union = {g.name: g for *_, inf_group, _ in jobs for g in inf_group}
    say(f"{tag}: influence, |G| = {len(union)}, N = {batch[0].shape[0]}")
    t0 = time.perf_counter()
    metric = _shard(batch if mbatch is None else mbatch, pg) if pg is not None else mbatch
    results = influence_sweep(
        model,
        loss,
        batch,
        list(union.values()),
        metric,
        solve.settings,
        progress=solve.progress,
        process_group=pg,
    )
    seconds = time.perf_counter() - t0
    for i, (spec, _, inf_group, piece) in enumerate(jobs):
        for path, res in zip((piece["influence"], *piece["sweep"]), results, strict=True):
            part = _select(res, [g.name for g in inf_group], shared=None if i == 0 else jobs[0][0])
            part.settings["audit"] = {
                "group_spec": spec,
                "family": piece["family"],
                "batch": piece["batch"],
                "time_index": piece["time_index"],
                # wall time of the whole sweep (all dampings share gradients and sketch);
                # 0 for the groups that share another group's computation
                "sweep_seconds": seconds if i == 0 else 0.0,
                "solved_with": [j[0] for j in jobs],
            }
            part.save(out / path)
    say(f"{tag}: influence done in {seconds:.1f} s")


def _select(res, names: list[str], shared: str | None):
    """The rows of ``res`` for the elements ``names``; with ``shared`` (the group that
    carries the computation), without solver reports and with zero solve time, so that
    totals over groups count every solve once."""
    from dataclasses import replace

    idx = [res.elements.index(n) for n in names]
    qerr = dict(res.quadratic_form_error)
    if "transformed" in qerr:
        qerr["transformed"] = qerr["transformed"][idx]
    tn = None if res.transformed_norms is None else res.transformed_norms[idx]
    timings = dict(res.timings)
    if shared is not None:
        timings = {k: 0.0 for k in timings}
    return replace(
        res,
        elements=list(names),
        raw=res.raw[idx],
        transformed_norms=tn,
        quadratic_form_error=qerr,
        reports={} if shared is not None else res.reports,
        timings=timings,
        settings={**res.settings, "group_elements": list(names)},
    )


def _loads(cls, path: Path) -> bool:
    """True if ``path`` holds a readable result (a corrupt piece is redone)."""
    if not path.is_file():
        return False
    try:
        cls.load(path)
    except ValueError:
        return False
    return True
