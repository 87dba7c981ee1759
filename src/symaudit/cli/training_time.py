"""`symaudit training-time` and `symaudit training-report`: symmetry learning over training
time (kept checkpoints, one audit each, the report against the training step)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from symaudit.cli._app import app


@app.command("training-time")
def training_time(
    out: Annotated[Path, typer.Option(help="Study directory (runs, audits, report).")],
    preset: Annotated[str, typer.Option(help="Training-time preset: micro or demo.")] = "demo",
    data: Annotated[
        Path | None,
        typer.Option(
            help="Directory with the study's train/ and test/ files (e.g. a reproduce "
            "OUT/data; read only). Default: generate them into OUT/data."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Train the preset's models keeping checkpoints on its schedule, audit every kept
    checkpoint with the same settings and write OUT/report/index.html (resumable: rerun the
    same command after an interruption)."""
    from symaudit.pipeline.training_time import run_training_time

    path = run_training_time(
        preset,
        out,
        data=data,
        device=device,
        progress=not quiet,
        log=None if quiet else typer.echo,
    )
    typer.echo(f"report written to {path}")


@app.command("training-report")
def training_report(
    audits: Annotated[
        list[Path],
        typer.Argument(help="Over-training audits (symaudit audit --run RUN --checkpoints ...)."),
    ],
    out: Annotated[Path, typer.Option(help="Report directory (index.html, figure, JSON).")],
    group: Annotated[
        str | None, typer.Option(help="Audited group to draw (default: the first audited).")
    ] = None,
) -> None:
    """E_g, D_g and the orbit influence of every element against the training step, per
    model, with the training loss on the same axis."""
    from symaudit.report.training_time import build_training_time_report

    typer.echo(f"report written to {build_training_time_report(audits, out, group=group)}")
