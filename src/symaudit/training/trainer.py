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

from symaudit._io import atomic_write_text, check_output_dir, exclusive
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
from symaudit.training.checkpoint import (
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
CHECKPOINT_NAME = "checkpoint.pt"
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
    resume may change it.
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
    d4 = torch.randint(8, (n,), generator=gen) if "d4" in config.augment else None
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
    """
    out = check_output_dir(out_dir)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    say = log if (log is not None and rank == 0) else (lambda _m: None)
    device = torch.device(config.device)
    dtype = getattr(torch, config.dtype)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {world} ranks")
    local_batch = config.batch_size // world

    data = load_transitions(
        config.data,
        snapshots=parse_snapshots(config.snapshots),
        val_fraction=config.val_fraction,
        seed=config.seed,
        stream=_stream(config),
    )
    streamed = not isinstance(data.train, torch.Tensor)
    n = data.num_transitions(config.unroll)
    if n < config.batch_size:
        raise ValueError(
            f"only {n} training transitions (unroll {config.unroll}) for batch size "
            f"{config.batch_size}: use more trajectories or a smaller --batch-size"
        )
    steps_per_epoch = n // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    loss_fn = SMSE(data.channel_rms).to(device)
    weights = family_weights(data, SMSE(data.channel_rms), config.balance)
    counts = [len(train_ids) for train_ids, _ in data.split.values()]
    # weight of every training trajectory (trajectories are concatenated file by file)
    traj_weight = torch.repeat_interleave(
        torch.tensor(list(weights.values()), dtype=dtype), torch.tensor(counts)
    )
    per_traj = data.train.shape[1] - config.unroll
    elements = list(Dihedral4(data.layout)) if "d4" in config.augment else []

    ckpt_path = out / CHECKPOINT_NAME
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(f".{CHECKPOINT_NAME}.tmp-*"):  # left by a killed run
            stale.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
    fresh = not ckpt_path.exists()
    kept = KeptCheckpoints.open(
        out, keep, steps_per_epoch, total_steps, fresh=fresh, write=rank == 0
    )
    mcfg = _resolve_model_config(config, data)
    torch.manual_seed(config.seed)
    model = build_from_config(mcfg).to(device=device, dtype=dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, step, start_batch, resumed_loss = 0, 0, 0, 0.0
    if ckpt_path.exists():
        saved = read_checkpoint(ckpt_path, map_location=device)
        _check_resume(saved["config"], config, ckpt_path)
        if saved["model_config"] != mcfg:
            raise CheckpointError(f"{ckpt_path}: model description differs from this run's")
        try:
            model.load_state_dict(saved["model_state"])
            optimizer.load_state_dict(saved["optimizer_state"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{ckpt_path}: state does not fit the model: {exc}") from exc
        restore_rng(saved["rng"])
        start_epoch, step, history = int(saved["epoch"]), int(saved["step"]), saved["history"]
        start_batch, resumed_loss = int(saved.get("batch", 0)), float(saved.get("epoch_loss", 0))
        if start_epoch < config.epochs:
            say(
                f"resuming {out} at epoch {start_epoch + 1}/{config.epochs}, "
                f"batch {start_batch} (step {step})"
            )
    elif rank == 0:
        atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2))

    ddp = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def save(epoch_done: int, batch: int, epoch_loss: float, path: Path = ckpt_path) -> None:
        save_checkpoint(
            path,
            {
                "model_config": mcfg,
                "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(),
                "epoch": epoch_done,
                "batch": batch,  # batches of the next epoch already done (mid-epoch save)
                "epoch_loss": epoch_loss,  # their summed loss, over all ranks
                "step": step,
                "rng": capture_rng(),
                "config": config.to_dict(),
                "layout": data.layout.to_json(),
                "channel_rms": data.channel_rms,
                "history": history,
                "split": data.split,
                "family_weights": weights,
            },
        )

    if fresh and rank == 0 and kept.due(0):
        save(0, 0, 0.0, kept.path(0))  # the initialisation
    bar = _progress(progress and rank == 0)
    epochs_run = samples_seen = steps_run = 0
    stopped = False
    # a second `train` on this run directory is refused instead of interleaving checkpoints
    sole_writer = exclusive(out) if rank == 0 else contextlib.nullcontext()
    with bar, sole_writer:
        total = (config.epochs - start_epoch) * steps_per_epoch - start_batch
        task = bar.add_task("train", total=total)
        for epoch in range(start_epoch, config.epochs):
            if stopped or (stop_after is not None and epochs_run >= stop_after):
                break
            t0 = time.perf_counter()
            gen = _epoch_generator(config.seed, epoch)
            order = torch.randperm(n, generator=gen)
            d4_idx, shifts = _draw_augmentations(config, n, gen, tuple(data.train.shape[-2:]))
            model.train()
            first = start_batch if epoch == start_epoch else 0
            # each rank holds 1/world of the resumed partial sum; all_reduce restores it
            loss_sum = torch.full((), resumed_loss / world, dtype=torch.float64, device=device)
            if first == 0:
                loss_sum.zero_()
            batches = [
                order[b * config.batch_size : (b + 1) * config.batch_size][
                    rank * local_batch : (rank + 1) * local_batch
                ]
                for b in range(first, steps_per_epoch)
            ]
            fetch = functools.partial(data.pairs, unroll=config.unroll)
            # streamed data: the next batch is read while this one computes
            samples = prefetched(fetch, batches) if streamed else map(fetch, batches)
            for b, idx, (x, y) in zip(range(first, steps_per_epoch), batches, samples, strict=True):
                if elements or shifts is not None:
                    x, y = _augment(
                        x,
                        y,
                        None if d4_idx is None else d4_idx[idx],
                        None if shifts is None else shifts[idx],
                        elements,
                    )
                x, y = x.to(device, dtype), y.to(device, dtype)
                per_sample = 0.0
                state = x
                for j in range(config.unroll):
                    state = ddp(state)
                    per_sample = per_sample + loss_fn.per_sample(state, y[:, j])
                w = traj_weight[idx // per_traj].to(device)
                # scaled so that DDP's mean over ranks is the mean over the global batch
                loss = (w * per_sample / config.unroll).sum() * (world / config.batch_size)
                for group in optimizer.param_groups:
                    group["lr"] = _lr(config, step, total_steps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                _check_step(model, loss, epoch, b, ckpt_path)
                optimizer.step()
                step += 1
                steps_run += 1
                samples_seen += x.shape[0]
                loss_sum += loss.detach().double()
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{config.epochs}")
                last_batch = b + 1 == steps_per_epoch
                due = bool(config.checkpoint_every) and step % config.checkpoint_every == 0
                if (due or kept.due(step)) and not last_batch:
                    partial = loss_sum.clone()
                    if world > 1:
                        dist.all_reduce(partial)
                    if rank == 0 and due:
                        save(epoch, b + 1, float(partial))
                    if rank == 0 and kept.due(step):
                        save(epoch, b + 1, float(partial), kept.path(step))
                    if world > 1:
                        dist.barrier()
                if (
                    stop_after_steps is not None
                    and steps_run >= stop_after_steps
                    and not last_batch
                ):
                    stopped = True
                    break
            if stopped:
                break
            if world > 1:
                dist.all_reduce(loss_sum)
            train_loss = float(loss_sum) / (world * steps_per_epoch)
            if rank == 0:
                metrics = {
                    "epoch": epoch + 1,
                    "step": step,
                    "lr": _lr(config, step, total_steps),
                    "train_loss": train_loss,
                    **{f"val_{k}": v for k, v in evaluate(model, data.val, loss_fn).items()},
                    "seconds": time.perf_counter() - t0,
                    "samples_per_second": steps_per_epoch
                    * config.batch_size
                    / (time.perf_counter() - t0),
                }
                history.append(metrics)
                save(epoch + 1, 0, 0.0)
                if kept.due(step):
                    save(epoch + 1, 0, 0.0, kept.path(step))
                atomic_write_text(
                    out / METRICS_NAME, "".join(json.dumps(m) + "\n" for m in history)
                )
                say(
                    f"epoch {epoch + 1}/{config.epochs}: train {train_loss:.4g}, "
                    f"val one-step {metrics['val_one_step']}, rollout {metrics['val_rollout_mean']}"
                )
            if world > 1:
                dist.barrier()
            epochs_run += 1
            if stop_after_steps is not None and steps_run >= stop_after_steps:
                break
    return TrainResult(model, history, ckpt_path, epochs_run, samples_seen)


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


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
