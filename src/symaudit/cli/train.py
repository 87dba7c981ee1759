"""`symaudit train`: train an emulator on dataset files (resumable, optionally with torchrun)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from symaudit.cli._app import app


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"override {text!r} must look like KEY=VALUE (VALUE as JSON)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


@app.command()
def train(
    model: Annotated[str, typer.Option(help="Model preset (see `symaudit models`).")],
    data: Annotated[
        list[Path], typer.Option(help="Dataset file or directory of *.h5 files (repeatable).")
    ],
    out: Annotated[Path, typer.Option(help="Run directory (checkpoint, metrics, config).")],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed: initialisation, split, data order.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Global mini-batch (over all ranks).")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 5e-4,
    weight_decay: Annotated[float, typer.Option(help="Adam (L2) weight decay.")] = 1e-6,
    schedule: Annotated[str, typer.Option(help="Learning-rate schedule: cosine or constant.")] = (
        "cosine"
    ),
    snapshots: Annotated[
        str, typer.Option(help="Snapshots used: all, N (first N), or start:stop[:step].")
    ] = "all",
    val_fraction: Annotated[
        float, typer.Option(help="Fraction of each file's trajectories held out.")
    ] = 0.1,
    unroll: Annotated[int, typer.Option(help="Steps of the unrolled (multi-step) loss.")] = 1,
    augment: Annotated[
        str, typer.Option(help="Random group augmentation: none, d4, shift, d4+shift.")
    ] = "none",
    dtype: Annotated[str, typer.Option(help="Parameter precision: float32 or float64.")] = (
        "float32"
    ),
    device: Annotated[
        str, typer.Option(help="Torch device (cpu, cuda); under torchrun cuda:LOCAL_RANK.")
    ] = "cpu",
    override: Annotated[
        list[str] | None,
        typer.Option(help="Model constructor override KEY=VALUE (JSON value), repeatable."),
    ] = None,
    checkpoint_every: Annotated[
        int, typer.Option(help="Also checkpoint every N steps within epochs (0: epoch ends).")
    ] = 0,
    balance: Annotated[
        float,
        typer.Option(
            help="Per-family loss weights w_f ∝ (persistence SMSE of file f)^-BALANCE; "
            "0 = plain SMSE (the paper), 0.5 = the demo preset."
        ),
    ] = 0.0,
    data_loading: Annotated[
        str,
        typer.Option(
            help="memory (all snapshots in RAM), stream (read each batch from the files, "
            "prefetched; RAM bounded by the batch) or auto (stream above 1/4 of the RAM)."
        ),
    ] = "auto",
    keep: Annotated[
        str | None,
        typer.Option(
            help="Also keep the checkpoints of a schedule in OUT/checkpoints/: "
            "[steps:|epochs:]geometric[:R] (0, 1, R, R^2, ...), every:K, or a list 0,1,5."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Train an autoregressive emulator with SMSE and Adam; checkpoint every epoch.

    Rerunning the same command after an interruption resumes from OUT/checkpoint.pt and ends
    with the same parameters as an uninterrupted run. For data parallelism launch with
    `torchrun --nproc-per-node N $(which symaudit) train ...` (gloo on CPU, nccl on CUDA).
    """
    from symaudit.cli._dist import process_group
    from symaudit.data.store import DatasetError
    from symaudit.training import CheckpointError, TrainConfig
    from symaudit.training import train as run

    with process_group(device) as (device, _, rank):
        try:
            config = TrainConfig(
                model=model,
                data=[str(d) for d in data],
                epochs=epochs,
                seed=seed,
                batch_size=batch_size,
                lr=lr,
                weight_decay=weight_decay,
                schedule=schedule,
                snapshots=None if snapshots == "all" else snapshots,
                val_fraction=val_fraction,
                unroll=unroll,
                augment=augment,
                dtype=dtype,
                device=device,
                model_overrides=dict(_parse_override(o) for o in override or []),
                checkpoint_every=checkpoint_every,
                data_loading=data_loading,
                balance=balance,
            )
            result = run(config, out, progress=not quiet, log=typer.echo, keep=keep)
        except (ValueError, KeyError, DatasetError, CheckpointError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
    if rank != 0:
        return
    if result.epochs_run == 0:
        typer.echo(f"{out}: already trained for {epochs} epochs, nothing to do")
    else:
        last = result.history[-1]
        typer.echo(
            f"done: {out} epoch {last['epoch']}, train {last['train_loss']:.4g}, "
            f"val one-step {last['val_one_step']}"
        )
