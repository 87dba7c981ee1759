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

import hashlib
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
    prepare_stage,
    replace_dir,
    staging_path,
)
from symaudit.errors import SymauditError

__all__ = [
    "DAMPING_SWEEP",
    "AuditError",
    "AuditRecord",
    "default_rtol",
    "load_audit",
    "run_audit",
    "settings_digest",
]

AUDIT_FORMAT = "symaudit-audit-2"  # 2: one family per mini-batch
#: relative dampings (fractions of eta's top eigenvalue) of ``--damping-sweep``
DAMPING_SWEEP = ("auto:1e-4", "auto:1e-3", "auto:1e-2", "auto:1e-1")
_PAPER_RTOL = {"unet": 5e-3, "gcnn": 5e-3, "vit": 5e-2}


class AuditError(SymauditError, RuntimeError):
    """An audit cannot run or resume (missing run, conflicting settings, too little data)."""


def default_rtol(architecture: str) -> float:
    """The paper's CG tolerance: 5e-3 for convolutional models, 5e-2 for the ViT."""
    return _PAPER_RTOL.get(architecture, 5e-3)


def settings_digest(data: Any) -> str:
    """SHA-256 (16 hex digits) of the canonical JSON of ``data``."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _group_dir(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)


def _is_translation(spec: str) -> bool:
    return all(t.strip().lower().startswith("shift") for t in spec.split("*"))


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
    """``"test"`` → None (the test batch itself); ``"train:N"`` → N training transitions
    drawn (seeded) from the run's own training trajectories."""
    if spec == "test":
        return None
    kind, _, num = spec.partition(":")
    if kind != "train" or not num.isdigit() or int(num) < 1:
        raise AuditError(f"metric batch must be 'test' or 'train:N', got {spec!r}")
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


def _test_errors(model, loss, test: _TestSet, device) -> dict:
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
    groups: Sequence[str],
    *,
    out: str | os.PathLike,
    damping: float | str | None = None,
    damping_sweep: Sequence[float | str] | None = None,
    rtol: float | None = None,
    test_batches: int = 1,
    per_family: int = 8,
    influence_shifts: Sequence[int] | None = None,
    test_data: Sequence[str | os.PathLike] | None = None,
    metric_batch: str = "test",
    max_iter: int = 500,
    rank: int | str = "auto",
    cosine: bool = True,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    process_group: object | None = None,
) -> Path:
    """Audit the run in ``run_dir`` for each group spec (e.g. "d4", "shift-x", "shift-y:4").

    Args:
        groups: `symaudit.groups.from_spec` strings; translations are audited late in the
            window, every other group at the first step (module docstring).
        out: the audit directory (created).
        damping: absolute lambda, "auto" (default: 1e-3 x top eigenvalue of eta) or
            "auto:<fraction>".
        damping_sweep: extra dampings computed with the same gradients and sketch (e.g.
            `DAMPING_SWEEP`), saved as ``sweep-<j>.pt``.
        rtol: CG relative residual; default `default_rtol` of the model's architecture.
        test_batches, per_family: K mini-batches per initial-condition family, each of
            N = ``per_family`` trajectories of that one family.
        influence_shifts: for translation groups, the shifts whose influence is computed
            (`symaudit.diagnostics.shifts.influence_shift_set`); equivariance errors cover
            every element of the group. None: influence on every element too.
        test_data: dataset files/directories with the test trajectories (one family per file);
            default: the run's held-out (validation) trajectories.
        metric_batch: "test" (eta from the test batch itself) or "train:N".
        max_iter, rank: CG iteration limit; rank of the Nyström preconditioner (its sketch
            costs ``rank`` products with eta), or "auto" (grown while it pays, see
            `symaudit.diagnostics.influence`).
        device: where the model and solves run.
        process_group: a torch.distributed group (e.g. ``dist.group.WORLD`` under torchrun,
            `symaudit audit --nproc K`): every rank runs this call, the metric batch is
            sharded over the ranks (each holds states r, r + K, ...; eta V is all-reduced)
            and only rank 0 writes ``out``.

    Returns the audit directory. Influence solves that do not converge warn
    (`ConvergenceWarning`) and are recorded per column in the result files.
    """
    from symaudit.groups import from_spec
    from symaudit.training import SMSE, load_checkpoint
    from symaudit.training.checkpoint import CheckpointError, read_checkpoint

    rank_, world = _ranks(process_group)
    say = (log if rank_ == 0 else None) or (lambda _m: None)
    run = Path(run_dir)
    out = check_output_dir(out)
    if not groups:
        raise AuditError("no groups to audit: pass e.g. --group d4")
    if test_batches < 1 or per_family < 1:
        raise AuditError("test_batches and per_family must be positive")
    ckpt_path = run / "checkpoint.pt"
    try:
        raw = read_checkpoint(ckpt_path)
        model, info = load_checkpoint(ckpt_path, map_location=device)
    except CheckpointError as exc:
        raise AuditError(f"cannot audit {run}: {exc}") from exc
    if info.epoch < int(info.config.get("epochs", info.epoch)):
        say(f"warning: {run} is trained for {info.epoch}/{info.config['epochs']} epochs only")
    arch = info.model_config["architecture"]
    rtol = default_rtol(arch) if rtol is None else float(rtol)
    damping = "auto" if damping is None else damping
    sweep = list(damping_sweep or [])
    test = _load_test_set(raw, test_data)
    n_times = test.times.numel()
    resolution = tuple(next(iter(test.families.values())).shape[-2:])
    dt = float(test.times[1] - test.times[0])

    settings = {
        "groups": list(groups),
        "damping": damping,
        "damping_sweep": sweep,
        "rtol": rtol,
        "test_batches": test_batches,
        "per_family": per_family,
        "influence_shifts": None if influence_shifts is None else sorted(influence_shifts),
        "test_data": test.sources,
        "metric_batch": metric_batch,
        "max_iter": max_iter,
        "rank": rank,
        "cosine": cosine,
    }
    meta = {
        "format": AUDIT_FORMAT,
        "run": {
            "dir": str(run),
            "checkpoint_sha256": _file_digest(ckpt_path),
            "epochs": info.epoch,
            "seed": int(info.config.get("seed", 0)),
            "config": info.config,
        },
        "model": {
            **info.model_config,
            "num_parameters": sum(p.numel() for p in model.parameters()),
        },
        "settings": settings,
        "settings_digest": settings_digest([settings, _file_digest(ckpt_path)]),
        "device": str(device),
        "times": test.times.tolist(),
        # families of the test data; each mini-batch is one of them (pieces' "family")
        "families": list(test.families),
        "processes": world,
        "complete": False,
    }
    final = out
    if rank_ == 0:
        out = _build_dir(out, meta["settings_digest"], settings, overwrite)
    else:  # the other ranks compute alongside rank 0 and write nothing that is kept
        out = Path(tempfile.mkdtemp(prefix=f"symaudit-rank{rank_}-"))
    meta_path = out / "audit.json"
    atomic_write_json(meta_path, meta)

    loss = SMSE(info.channel_rms).to(device)
    if rank_ == 0 and not (out / "test_errors.json").exists():
        say("test errors vs persistence")
        atomic_write_json(out / "test_errors.json", _test_errors(model, loss, test, device))
    mbatch = _metric_batch(metric_batch, raw, seed=int(info.config.get("seed", 0)))

    pieces: dict[str, list[dict]] = {spec: [] for spec in groups}
    fams = list(test.families)
    built = {}
    for spec in groups:
        group = from_spec(spec, info.layout, resolution=resolution, dt=dt)
        step = n_times - 2 if _is_translation(spec) else 0
        built[spec] = (group, _influence_elements(group, spec, influence_shifts), step)
    solve = dict(
        dampings=[damping, *sweep],
        rtol=rtol,
        max_iter=max_iter,
        rank=rank,
        cosine=cosine,
        progress=progress and rank_ == 0,
        process_group=process_group,
    )
    clusters = _solve_clusters(list(groups))
    total, done = len(clusters) * test_batches * len(fams), 0
    for fam in fams:
        for k in range(test_batches):
            for cluster in clusters:
                done += 1
                step = built[cluster[0]][2]
                jobs = []
                for spec in cluster:
                    group, inf_group, _ = built[spec]
                    piece = _piece(spec, fam, k, len(sweep), inf_group, step, test.times)
                    pieces[spec].append(piece)
                    jobs.append((spec, group, inf_group, piece))
                batch = test.batch(fam, k, per_family, step)
                tag = f"[{done}/{total}] {'+'.join(cluster)} {fam} batch {k + 1}"
                _audit_pieces(
                    model,
                    loss,
                    batch,
                    jobs,
                    mbatch,
                    out,
                    tag + f" (t = {float(test.times[step]):.3g})",
                    say,
                    solve,
                )
    meta["pieces"] = pieces
    meta["complete"] = True
    atomic_write_json(meta_path, meta)
    if rank_ != 0:
        shutil.rmtree(out, ignore_errors=True)
    elif out != final:
        replace_dir(out, final)
    return final


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


def _influence_elements(group, spec: str, shifts: Sequence[int] | None):
    """The elements whose influence is computed: for a translation group with ``shifts``
    given, those whose shift (along the group's axis) is in it; else the whole group."""
    if shifts is None or not _is_translation(spec):
        return group
    keep = {int(s) for s in shifts} | {0}
    return group.subset([g.name for g in group if all(c in keep for c in g.shift)])


def _solve_clusters(groups: list[str]) -> list[list[str]]:
    """Groups whose influence shares one computation: all translation groups (audited on
    the same states, so one Nyström sketch and one test solve serve them all); every other
    group alone."""
    shifts = [g for g in groups if _is_translation(g)]
    return [[g] for g in groups if not _is_translation(g)] + ([shifts] if shifts else [])


def _audit_pieces(model, loss, batch, jobs: list, mbatch, out: Path, tag: str, say, solve: dict):
    """For one mini-batch: equivariance errors of each job's whole group, then influence on
    the union of the jobs' influence elements in one `influence_sweep` (each skipped if on
    disk), split back into one result per group. The first group's result carries the
    solver reports and solve time; the others record that they share it."""
    from symaudit.diagnostics.equivariance import EquivarianceResult, equivariance_error
    from symaudit.diagnostics.influence import InfluenceResult, influence_sweep

    pg = solve.get("process_group")
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
    results = influence_sweep(model, loss, batch, list(union.values()), metric, **solve)
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
