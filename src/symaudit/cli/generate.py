"""`symaudit generate`: simulate a compressible-Euler dataset (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from symaudit.cli._app import app
from symaudit.physics.initial_conditions import KINDS


@app.command()
def generate(
    out: Annotated[
        Path, typer.Option("--out", help="Output dataset file (HDF5), e.g. data/ce-rp.h5.")
    ],
    kind: Annotated[
        str, typer.Option(help=f"Initial-condition family: {', '.join(KINDS)}.")
    ] = "ce-rp",
    trajectories: Annotated[int, typer.Option(help="Number of trajectories.")] = 64,
    resolution: Annotated[int, typer.Option(help="Output grid size R (R x R cells).")] = 64,
    snapshots: Annotated[int, typer.Option(help="Snapshots uniformly on [0, t_final].")] = 21,
    t_final: Annotated[float, typer.Option(help="Final simulated time.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Base seed; same seed, same data.")] = 0,
    device: Annotated[
        str, typer.Option(help="Torch device for the solver, e.g. cpu, cuda.")
    ] = "cpu",
    supersample: Annotated[
        int, typer.Option(help="Simulate at k x resolution, store k x k block averages.")
    ] = 1,
    batch_size: Annotated[
        int, typer.Option(help="Trajectories evolved together (memory/speed; same data).")
    ] = 8,
    dtype: Annotated[
        str, typer.Option(help="Simulation precision: float32 or float64 (stored as float32).")
    ] = "float64",
    cfl: Annotated[float, typer.Option(help="Courant number of the solver.")] = 0.4,
    gamma: Annotated[float, typer.Option(help="Ratio of specific heats.")] = 1.4,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an existing output / discard a partial run with other settings.",
        ),
    ] = False,
    threads: Annotated[
        int,
        typer.Option(
            help="Torch CPU threads. 1 by default: a second thread made a 64^2 run 9x slower "
            "on a busy 2-core machine; raise it on an idle many-core one."
        ),
    ] = 1,
    shard: Annotated[
        str | None,
        typer.Option(
            help="I/N: generate only the I-th of N trajectory ranges, into OUT.shard-I-of-N "
            "(run N of these in parallel, then --merge N)."
        ),
    ] = None,
    merge: Annotated[
        int | None,
        typer.Option(
            help="Merge the N finished shards OUT.shard-*-of-N into OUT (same settings); "
            "the result is bitwise the file one process writes."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Simulate PDEGym-style compressible-Euler trajectories into one HDF5 file.

    Work happens in OUT.partial beside OUT. If the run is killed, the same
    command resumes it, and the result is bitwise identical to an
    uninterrupted run. Rerunning with different settings against a partial
    file is an error (--overwrite restarts). See docs/data.md.
    """
    import torch

    from symaudit.data.generate import (
        GenerationError,
        GenerationSettings,
        merge_shards,
        parse_shard,
    )
    from symaudit.data.generate import generate as run

    settings = GenerationSettings(
        kind=kind,
        trajectories=trajectories,
        resolution=resolution,
        snapshots=snapshots,
        t_final=t_final,
        seed=seed,
        supersample=supersample,
        dtype=dtype,
        device=device,
        gamma=gamma,
        cfl=cfl,
    )
    # Denormals make float32 finite-volume code >10x slower on CPU (NOTES.md).
    torch.set_flush_denormal(True)
    if threads < 1:
        typer.secho("error: --threads must be at least 1", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    torch.set_num_threads(threads)
    try:
        if shard is not None and merge is not None:
            raise ValueError("--shard and --merge exclude each other")
        if merge is not None:
            path = merge_shards(settings, out, merge, overwrite=overwrite)
        else:
            part = parse_shard(shard) if shard is not None else None
            path = run(
                settings,
                out,
                batch_size=batch_size,
                overwrite=overwrite,
                progress=not quiet,
                shard=part,
            )
    except (ValueError, GenerationError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    what = f"shard {shard} of " if shard is not None else ""
    typer.echo(
        f"wrote {path} ({what}{trajectories} trajectories, {snapshots} snapshots, {resolution}^2)"
    )
