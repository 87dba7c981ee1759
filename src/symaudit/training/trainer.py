"""Autoregressive emulator training: SMSE, Adam, per-epoch atomic checkpoints, exact resume, DDP.

Per step, for a global batch B of transitions (x_t, x_{t+1}, …, x_{t+k}) and unroll k:

    loss = mean_{b ∈ B} w_{f(b)} (1/k) Σ_{j=1..k} SMSE(f^j(x_t^b), x_{t+j}^b)

with w_f = 1 (plain SMSE, the paper) unless ``balance`` β > 0: then w_f ∝ P_f^(-β), P_f the
SMSE of the persistence forecast x_{t+1} = x_t over the training transitions of dataset file
(initial-condition family) f, normalised to mean 1 over the training samples. SMSE divides by
the pooled channel RMS, so a family with much larger fields (CE-RPUI: energies ~60× those of
CE-RP) otherwise owns the loss and the other families' errors barely move the gradient; β = 1
counts every family's error relative to its own persistence error.

optimised with Adam (L2 weight decay, as in the paper), learning rate lr(step) constant or
cosine-decayed over all steps. Reproducibility: the data order and the augmentation draws of
epoch e come from a generator seeded by (seed, e) and are drawn for the whole global epoch, so
(1) a run resumed from the checkpoint of epoch e replays epoch e+1 exactly — on CPU the final
parameters are bitwise those of an uninterrupted run — and (2) with DDP every rank sees the
same global batches, each taking a contiguous shard of B / world_size samples; per-rank losses
are scaled so that DDP's gradient average equals the single-process gradient (float round-off
aside). Batches of fewer than B samples at the end of an epoch are skipped (the order is
reshuffled every epoch, so no sample is left out systematically).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from symaudit._io import (
    atomic_write_text,
    check_output_dir,
    exclusive,
    remove_stale_temporaries,
)
from symaudit._progress import progress_bar
from symaudit.data.stream import prefetched
from symaudit.data.transitions import (
    TransitionData,
    load_transitions,
    parse_snapshots,
    selected_nbytes,
)
from symaudit.errors import SymauditError
from symaudit.groups import Dihedral4
from symaudit.models import build_from_config, model_config
from symaudit.training.augment_subset import check_augment_elements, d4_draw_elements
from symaudit.training.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    capture_rng,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)
from symaudit.training.loss import SMSE
from symaudit.training.schedule import CheckpointSchedule, KeptCheckpoints

__all__ = [
    "AUGMENTATIONS",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "evaluate",
    "family_weights",
    "train",
]

AUGMENTATIONS = ("none", "d4", "shift", "d4+shift")
METRICS_NAME = "metrics.jsonl"
# Settings that may differ between a run and its resumption (they do not change the result).
_RESUMABLE_DIFFERENCES = {"device", "checkpoint_every", "data_loading"}
DATA_LOADING = ("auto", "memory", "stream")
#: "auto" streams the training data when they would take more than this share of the RAM
_STREAM_ABOVE_RAM_FRACTION = 0.25


class TrainingError(SymauditError, RuntimeError):
    """Training cannot continue (a non-finite loss or gradient)."""


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in every checkpoint).

    ``data``: dataset files or directories; ``snapshots``: 'all', a count N (first N), or
    'a:b[:s]'; ``batch_size``: global batch (split over DDP ranks); ``schedule``: 'cosine' or
    'constant'; ``unroll``: steps of the multi-step loss; ``augment``: one of AUGMENTATIONS
    (a random D4 element and/or periodic shift per sample, applied to input and targets);
    ``checkpoint_every``: also checkpoint every N steps within an epoch (0: at epoch ends
    only) — for long epochs; it does not change the result, so a resume may change it.
    ``balance``: exponent β ≥ 0 of the per-family loss weights w_f ∝ P_f^(-β) (module
    docstring); 0 is plain SMSE. ``data_loading``: "memory" (all selected snapshots in RAM),
    "stream" (read each batch from the files, the next one prefetched: RAM bounded by the
    batch) or "auto" (stream above a quarter of the RAM); the same batches either way, so a
    resume may change it. ``augment_elements``: with a "d4" augmentation, the D4 elements
    drawn from (uniformly, the identity always among them; `symaudit.training.augment_subset`);
    None: all eight.
    """

    model: str = "unet-small"
    data: list[str] = field(default_factory=list)
    epochs: int = 10
    seed: int = 0
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 1e-6
    schedule: str = "cosine"
    snapshots: str | None = None
    val_fraction: float = 0.1
    unroll: int = 1
    augment: str = "none"
    dtype: str = "float32"
    device: str = "cpu"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 0
    balance: float = 0.0
    data_loading: str = "auto"
    augment_elements: list[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data, str | os.PathLike):
            self.data = [self.data]
        self.data = [str(d) for d in self.data]
        if self.epochs < 1 or self.batch_size < 1 or self.unroll < 1:
            raise ValueError("epochs, batch_size and unroll must be positive")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.data_loading not in DATA_LOADING:
            raise ValueError(
                f"data_loading must be one of {DATA_LOADING}, got {self.data_loading!r}"
            )
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        if not (math.isfinite(self.balance) and self.balance >= 0):
            raise ValueError(f"balance must be a finite number >= 0, got {self.balance!r}")
        parse_snapshots(self.snapshots)  # validates
        self.augment_elements = check_augment_elements(self.augment_elements, self.augment)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["augment_elements"] is None:  # absent: runs from before it keep their digests
            del d["augment_elements"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        return cls(**data)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    checkpoint: Path
    epochs_run: int
    samples_seen: int  # training samples this process used in this call (its DDP shard)


def _lr(config: TrainConfig, step: int, total: int) -> float:
    if config.schedule == "constant":
        return config.lr
    return 0.5 * config.lr * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) + 17)


def _draw_augmentations(
    config: TrainConfig, n: int, gen: torch.Generator, resolution: tuple[int, int]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-sample D4 element indices `(n,)` and shifts `(n, 2)` for one epoch (or None)."""
    draws = 8 if config.augment_elements is None else 1 + len(config.augment_elements)
    d4 = torch.randint(draws, (n,), generator=gen) if "d4" in config.augment else None
    shifts = None
    if "shift" in config.augment:
        shifts = torch.stack(
            [torch.randint(r, (n,), generator=gen) for r in resolution], dim=1
        )  # (dy, dx)
    return d4, shifts


def _augment(x, y, d4_idx, shifts, elements):
    """Apply sample i's group element to its input `(C, H, W)` and targets `(k, C, H, W)`."""
    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        if d4_idx is not None:
            g = elements[int(d4_idx[i])]
            xi, yi = g(xi), g(yi)
        if shifts is not None:
            s = (int(shifts[i, 0]), int(shifts[i, 1]))
            xi, yi = torch.roll(xi, s, dims=(-2, -1)), torch.roll(yi, s, dims=(-2, -1))
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


@torch.no_grad()
def evaluate(
    model: nn.Module, trajectories: torch.Tensor, loss: SMSE, *, batch: int = 16
) -> dict[str, Any]:
    """Validation metrics on trajectories `(n, T, C, H, W)`.

    ``one_step``: mean SMSE of f(x_t) against x_{t+1} over all n(T-1) transitions;
    ``rollout``: per step j = 1..T-1, mean SMSE of f^j(x_0) against x_j (autoregressive);
    ``rollout_mean``: their average."""
    if trajectories.shape[0] == 0:
        return {"one_step": None, "rollout": None, "rollout_mean": None}
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    n, t = trajectories.shape[:2]
    one_step, rollout = 0.0, torch.zeros(t - 1, dtype=torch.float64)
    for start in range(0, n, batch):
        traj = trajectories[start : start + batch].to(p.device, p.dtype)
        x = traj[:, :-1].flatten(0, 1)
        for chunk_x, chunk_y in zip(
            x.split(batch), traj[:, 1:].flatten(0, 1).split(batch), strict=True
        ):
            one_step += float(loss.per_sample(model(chunk_x), chunk_y).double().sum())
        state = traj[:, 0]
        for j in range(1, t):
            state = model(state)
            rollout[j - 1] += loss.per_sample(state, traj[:, j]).double().sum().cpu()
    model.train(was_training)
    rollout /= n
    return {
        "one_step": one_step / (n * (t - 1)),
        "rollout": rollout.tolist(),
        "rollout_mean": float(rollout.mean()),
    }


def _resolve_model_config(config: TrainConfig, data: TransitionData) -> dict[str, Any]:
    overrides = dict(config.model_overrides)
    cfg = model_config(config.model, **overrides)
    if cfg["architecture"] == "vit" and "resolution" not in overrides:
        # the ViT's position embedding is built for one grid: take the data's
        cfg["kwargs"]["resolution"] = list(data.train.shape[-2:])
    if cfg["architecture"] == "gcnn" and "layout" not in overrides:
        cfg["kwargs"]["layout"] = data.layout.to_dict()
    c = data.layout.num_channels
    if cfg["architecture"] in ("unet", "vit") and c != 4 and "in_channels" not in overrides:
        cfg["kwargs"].update(in_channels=c, out_channels=c)  # presets default to 4 (Euler)
    return cfg


def family_weights(data: TransitionData, loss: SMSE, balance: float) -> dict[str, float]:
    """Per-file loss weights w_f ∝ P_f^(-balance), mean 1 over training samples (see module
    docstring); P_f = mean persistence SMSE over file f's training transitions."""
    counts = [len(train_ids) for train_ids, _ in data.split.values()]
    if balance == 0:
        return dict.fromkeys(data.split, 1.0)
    persistence, start = [], 0
    with torch.no_grad():
        for path, n in zip(data.split, counts, strict=True):
            p = 0.0
            for a in range(start, start + n, 64):  # bounded memory when streaming
                for t in data.train[a : min(a + 64, start + n)]:
                    p += float(loss.per_sample(t[:-1], t[1:]).double().sum())
            start += n
            p /= max(1, n * (data.train.shape[1] - 1))
            if not (p > 0 and math.isfinite(p)):
                raise ValueError(
                    f"{path}: persistence error {p} of its training transitions is not positive "
                    "and finite, cannot balance the loss by it (use balance=0)"
                )
            persistence.append(p)
    raw = [p**-balance for p in persistence]
    mean = sum(w * n for w, n in zip(raw, counts, strict=True)) / sum(counts)
    return {path: w / mean for path, w in zip(data.split, raw, strict=True)}


def streams_by_default(nbytes: int) -> bool:
    """What data_loading="auto" does with ``nbytes`` of training snapshots: stream them when
    they exceed a quarter of this machine's RAM."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return nbytes > _STREAM_ABOVE_RAM_FRACTION * ram


def _stream(config: TrainConfig) -> bool:
    if config.data_loading != "auto":
        return config.data_loading == "stream"
    return streams_by_default(selected_nbytes(config.data, parse_snapshots(config.snapshots)))


def _check_resume(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    ours = config.to_dict()
    # settings added after a checkpoint was written count as their defaults
    defaults = TrainConfig().to_dict()
    diff = sorted(
        k
        for k in set(saved) | set(ours)
        if k not in _RESUMABLE_DIFFERENCES and saved.get(k, defaults.get(k)) != ours.get(k)
    )
    if diff:
        details = ", ".join(
            f"{k}: checkpoint {saved.get(k)!r} vs now {ours.get(k)!r}" for k in diff
        )
        raise CheckpointError(
            f"{path}: cannot resume, the run was started with different settings ({details}); "
            "use a new --out directory or the original settings"
        )


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    stop_after_steps: int | None = None,
    log: Callable[[str], None] | None = None,
    keep: str | CheckpointSchedule | None = None,
) -> TrainResult:
    """Train (or resume) the run in ``out_dir``; returns the model and metrics history.

    ``out_dir`` receives ``checkpoint.pt`` (after every epoch, atomically), ``metrics.jsonl``
    (one JSON line per epoch) and ``config.json``. If a checkpoint is there, training resumes
    from it (the settings must match, else `CheckpointError`). ``stop_after`` /
    ``stop_after_steps`` end this call after that many epochs / optimiser steps (a planned
    interruption, after any checkpoint due at that point). Uses the initialised
    `torch.distributed` process group if there is one (see module docstring). ``keep``: a
    checkpoint schedule (`symaudit.training.schedule`) whose steps are also saved under
    ``out_dir/checkpoints/``.

    The steps, in order: `_prepare` (data, loss weights, model, optimiser), `_resume` (from
    the checkpoint, if any), `_wrap_ddp`, then per epoch `_run_epoch` (per batch
    `_augment_batch`, `_train_step`, `_save_mid_epoch` when due) and `_end_epoch` (metrics,
    `_save_checkpoint`).
    """
    out = check_output_dir(out_dir)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    say = log if (log is not None and rank == 0) else (lambda _m: None)
    r = _prepare(config, out, rank, world)
    fresh = not r.ckpt_path.exists()
    r.kept = KeptCheckpoints.open(
        out, keep, r.steps_per_epoch, r.total_steps, fresh=fresh, write=rank == 0
    )
    start = _resume(r, say)
    if fresh and rank == 0 and r.kept.due(0):
        _save_checkpoint(r, 0, 0, 0.0, r.kept.path(0))  # the initialisation
    r.ddp = _wrap_ddp(r.model, r.device, world)
    return _train_epochs(r, start, progress, stop_after, stop_after_steps, say)


@dataclass
class _Run:
    """What one `train` call works with; ``step`` and ``history`` advance as it trains."""

    config: TrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    data: TransitionData
    streamed: bool
    n: int  # training transitions
    loss_fn: SMSE
    weights: dict[str, float]  # per dataset file (family)
    traj_weight: torch.Tensor  # per training trajectory
    elements: list  # D4 elements of the augmentation (or none)
    model_config: dict[str, Any]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ddp: nn.Module | None = None
    kept: KeptCheckpoints | None = None  # the checkpoint schedule's copies
    history: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0

    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.config.batch_size

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def per_traj(self) -> int:
        return self.data.train.shape[1] - self.config.unroll


@dataclass
class _Counts:
    """What this call has done (a resumed run counts from its resumption)."""

    epochs: int = 0
    steps: int = 0
    samples: int = 0


def _prepare(config: TrainConfig, out: Path, rank: int, world: int) -> _Run:
    """Load the data, weigh the families, build the model (seeded) and the optimiser."""
    device = torch.device(config.device)
    dtype = getattr(torch, config.dtype)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {world} ranks")
    data = load_transitions(
        config.data,
        snapshots=parse_snapshots(config.snapshots),
        val_fraction=config.val_fraction,
        seed=config.seed,
        stream=_stream(config),
    )
    n = data.num_transitions(config.unroll)
    if n < config.batch_size:
        raise ValueError(
            f"only {n} training transitions (unroll {config.unroll}) for batch size "
            f"{config.batch_size}: use more trajectories or a smaller --batch-size"
        )
    weights = family_weights(data, SMSE(data.channel_rms), config.balance)
    counts = [len(train_ids) for train_ids, _ in data.split.values()]
    # weight of every training trajectory (trajectories are concatenated file by file)
    traj_weight = torch.repeat_interleave(
        torch.tensor(list(weights.values()), dtype=dtype), torch.tensor(counts)
    )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if world > 1:
        dist.barrier()
    mcfg = _resolve_model_config(config, data)
    torch.manual_seed(config.seed)
    model = build_from_config(mcfg).to(device=device, dtype=dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return _Run(
        config=config,
        out=out,
        rank=rank,
        world=world,
        device=device,
        dtype=dtype,
        data=data,
        streamed=not isinstance(data.train, torch.Tensor),
        n=n,
        loss_fn=SMSE(data.channel_rms).to(device),
        weights=weights,
        traj_weight=traj_weight,
        # the D4 elements drawn from (all eight, or a chosen subset with the identity)
        elements=(
            d4_draw_elements(Dihedral4(data.layout), config.augment_elements)
            if "d4" in config.augment
            else []
        ),
        model_config=mcfg,
        model=model,
        optimizer=optimizer,
    )


def _resume(r: _Run, say: Callable[[str], None]) -> tuple[int, int, float]:
    """Restore model, optimiser, RNG, step and history from the run's checkpoint if there is
    one (else write config.json); returns (epoch, batch within it, that batch's summed loss)
    to start from."""
    if not r.ckpt_path.exists():
        if r.rank == 0:
            atomic_write_text(r.out / "config.json", json.dumps(r.config.to_dict(), indent=2))
        return 0, 0, 0.0
    saved = read_checkpoint(r.ckpt_path, map_location=r.device)
    _check_resume(saved["config"], r.config, r.ckpt_path)
    if saved["model_config"] != r.model_config:
        raise CheckpointError(f"{r.ckpt_path}: model description differs from this run's")
    try:
        r.model.load_state_dict(saved["model_state"])
        r.optimizer.load_state_dict(saved["optimizer_state"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{r.ckpt_path}: state does not fit the model: {exc}") from exc
    restore_rng(saved["rng"])
    start_epoch, r.step, r.history = int(saved["epoch"]), int(saved["step"]), saved["history"]
    start_batch, resumed_loss = int(saved.get("batch", 0)), float(saved.get("epoch_loss", 0))
    if start_epoch < r.config.epochs:
        say(
            f"resuming {r.out} at epoch {start_epoch + 1}/{r.config.epochs}, "
            f"batch {start_batch} (step {r.step})"
        )
    return start_epoch, start_batch, resumed_loss


def _wrap_ddp(model: nn.Module, device: torch.device, world: int) -> nn.Module:
    if world == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _train_epochs(
    r: _Run,
    start: tuple[int, int, float],
    progress: bool,
    stop_after: int | None,
    stop_after_steps: int | None,
    say: Callable[[str], None],
) -> TrainResult:
    start_epoch, start_batch, resumed_loss = start
    counts = _Counts()
    bar = progress_bar(progress and r.rank == 0)
    # a second `train` on this run directory is refused instead of interleaving checkpoints
    sole_writer = exclusive(r.out) if r.rank == 0 else contextlib.nullcontext()
    with bar, sole_writer:
        if r.rank == 0:  # the sole writer now: what a killed writer left half-written goes
            for name in (CHECKPOINT_NAME, METRICS_NAME):
                remove_stale_temporaries(r.out / name)
        total = (r.config.epochs - start_epoch) * r.steps_per_epoch - start_batch
        task = bar.add_task("train", total=total)
        for epoch in range(start_epoch, r.config.epochs):
            if stop_after is not None and counts.epochs >= stop_after:
                break
            t0 = time.perf_counter()
            first = start_batch if epoch == start_epoch else 0
            desc = f"epoch {epoch + 1}/{r.config.epochs}"

            def advance(desc: str = desc) -> None:
                bar.update(task, advance=1, description=desc)

            loss_sum, stopped = _run_epoch(
                r, epoch, first, resumed_loss, counts, stop_after_steps, advance
            )
            if stopped:
                break
            _end_epoch(r, epoch, loss_sum, t0, say)
            counts.epochs += 1
            if stop_after_steps is not None and counts.steps >= stop_after_steps:
                break
    return TrainResult(r.model, r.history, r.ckpt_path, counts.epochs, counts.samples)


def _run_epoch(
    r: _Run,
    epoch: int,
    first: int,
    resumed_loss: float,
    counts: _Counts,
    stop_after_steps: int | None,
    advance: Callable[[], None],
) -> tuple[torch.Tensor, bool]:
    """Batches ``first``.. of ``epoch``; returns this rank's summed loss and whether
    ``stop_after_steps`` stopped the epoch early."""
    cfg = r.config
    gen = _epoch_generator(cfg.seed, epoch)
    order = torch.randperm(r.n, generator=gen)
    d4_idx, shifts = _draw_augmentations(cfg, r.n, gen, tuple(r.data.train.shape[-2:]))
    r.model.train()
    # each rank holds 1/world of the resumed partial sum; all_reduce restores it
    loss_sum = torch.full((), resumed_loss / r.world, dtype=torch.float64, device=r.device)
    if first == 0:
        loss_sum.zero_()
    local = cfg.batch_size // r.world
    batches = [
        order[b * cfg.batch_size : (b + 1) * cfg.batch_size][r.rank * local : (r.rank + 1) * local]
        for b in range(first, r.steps_per_epoch)
    ]
    fetch = functools.partial(r.data.pairs, unroll=cfg.unroll)
    # streamed data: the next batch is read while this one computes
    samples = prefetched(fetch, batches) if r.streamed else map(fetch, batches)
    for b, idx, (x, y) in zip(range(first, r.steps_per_epoch), batches, samples, strict=True):
        x, y = _augment_batch(r, x, y, idx, d4_idx, shifts)
        loss = _train_step(r, x, y, idx, epoch, b)
        counts.steps += 1
        counts.samples += x.shape[0]
        loss_sum += loss.detach().double()
        advance()
        last_batch = b + 1 == r.steps_per_epoch
        due = bool(cfg.checkpoint_every) and r.step % cfg.checkpoint_every == 0
        if (due or r.kept.due(r.step)) and not last_batch:
            _save_mid_epoch(r, epoch, b + 1, loss_sum, due)
        if stop_after_steps is not None and counts.steps >= stop_after_steps and not last_batch:
            return loss_sum, True
    return loss_sum, False


def _augment_batch(r: _Run, x, y, idx, d4_idx, shifts) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch under this epoch's drawn group elements (unchanged without augmentation)."""
    if not r.elements and shifts is None:
        return x, y
    return _augment(
        x,
        y,
        None if d4_idx is None else d4_idx[idx],
        None if shifts is None else shifts[idx],
        r.elements,
    )


def _train_step(r: _Run, x, y, idx, epoch: int, batch: int) -> torch.Tensor:
    """One optimiser step on a batch `(b, C, H, W)` with targets `(b, k, C, H, W)`."""
    cfg = r.config
    x, y = x.to(r.device, r.dtype), y.to(r.device, r.dtype)
    per_sample = 0.0
    state = x
    for j in range(cfg.unroll):
        state = r.ddp(state)
        per_sample = per_sample + r.loss_fn.per_sample(state, y[:, j])
    w = r.traj_weight[idx // r.per_traj].to(r.device)
    # scaled so that DDP's mean over ranks is the mean over the global batch
    loss = (w * per_sample / cfg.unroll).sum() * (r.world / cfg.batch_size)
    for group in r.optimizer.param_groups:
        group["lr"] = _lr(cfg, r.step, r.total_steps)
    r.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _check_step(r.model, loss, epoch, batch, r.ckpt_path)
    r.optimizer.step()
    r.step += 1
    return loss


def _save_checkpoint(
    r: _Run, epoch_done: int, batch: int, epoch_loss: float, path: Path | None = None
) -> None:
    """Everything a resume needs, written atomically to the run's checkpoint (or ``path``:
    a copy the checkpoint schedule keeps)."""
    save_checkpoint(
        r.ckpt_path if path is None else path,
        {
            "model_config": r.model_config,
            "model_state": r.model.state_dict(),
            "optimizer_state": r.optimizer.state_dict(),
            "epoch": epoch_done,
            "batch": batch,  # batches of the next epoch already done (mid-epoch save)
            "epoch_loss": epoch_loss,  # their summed loss, over all ranks
            "step": r.step,
            "rng": capture_rng(),
            "config": r.config.to_dict(),
            "layout": r.data.layout.to_json(),
            "channel_rms": r.data.channel_rms,
            "history": r.history,
            "split": r.data.split,
            "family_weights": r.weights,
        },
    )


def _save_mid_epoch(
    r: _Run, epoch: int, batch: int, loss_sum: torch.Tensor, resume_point: bool
) -> None:
    """A checkpoint inside ``epoch`` after ``batch`` batches: the run's own
    (``resume_point``: ``checkpoint_every`` is due) and/or the schedule's copy."""
    partial = loss_sum.clone()
    if r.world > 1:
        dist.all_reduce(partial)
    if r.rank == 0 and resume_point:
        _save_checkpoint(r, epoch, batch, float(partial))
    if r.rank == 0 and r.kept.due(r.step):
        _save_checkpoint(r, epoch, batch, float(partial), r.kept.path(r.step))
    if r.world > 1:
        dist.barrier()


def _end_epoch(
    r: _Run, epoch: int, loss_sum: torch.Tensor, t0: float, say: Callable[[str], None]
) -> None:
    """Validation metrics, the epoch-end checkpoint and metrics.jsonl (rank 0)."""
    if r.world > 1:
        dist.all_reduce(loss_sum)
    train_loss = float(loss_sum) / (r.world * r.steps_per_epoch)
    if r.rank == 0:
        metrics = _epoch_metrics(r, epoch, train_loss, t0)
        r.history.append(metrics)
        _save_checkpoint(r, epoch + 1, 0, 0.0)
        if r.kept.due(r.step):
            _save_checkpoint(r, epoch + 1, 0, 0.0, r.kept.path(r.step))
        atomic_write_text(r.out / METRICS_NAME, "".join(json.dumps(m) + "\n" for m in r.history))
        say(
            f"epoch {epoch + 1}/{r.config.epochs}: train {train_loss:.4g}, "
            f"val one-step {metrics['val_one_step']}, rollout {metrics['val_rollout_mean']}"
        )
    if r.world > 1:
        dist.barrier()


def _epoch_metrics(r: _Run, epoch: int, train_loss: float, t0: float) -> dict[str, Any]:
    cfg = r.config
    return {
        "epoch": epoch + 1,
        "step": r.step,
        "lr": _lr(cfg, r.step, r.total_steps),
        "train_loss": train_loss,
        **{f"val_{k}": v for k, v in evaluate(r.model, r.data.val, r.loss_fn).items()},
        "seconds": time.perf_counter() - t0,
        "samples_per_second": r.steps_per_epoch * cfg.batch_size / (time.perf_counter() - t0),
    }


def _check_step(model: nn.Module, loss: torch.Tensor, epoch: int, batch: int, ckpt: Path) -> None:
    """Stop before a non-finite loss or gradient reaches the parameters.

    Gradients are checked after DDP's all-reduce, so every rank stops at the same step; the
    step is not taken and nothing is saved, so the last checkpoint stays the last good one.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    if bool(torch.isfinite(loss)) and bool(torch.isfinite(norm)):
        return
    kept = f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint was saved"
    raise TrainingError(
        f"non-finite training loss {float(loss.detach()):.4g} (gradient norm {float(norm):.4g}) at "
        f"epoch {epoch + 1}, batch {batch + 1}: stopped before the update; {kept}. Check the "
        "data for NaN/inf and lower --lr"
    )
