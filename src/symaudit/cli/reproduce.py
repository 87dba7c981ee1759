"""`symaudit reproduce`: the paper's study end to end (generate, train, audit, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from symaudit.cli._app import app


@app.command()
def reproduce(
    preset: Annotated[
        str, typer.Option(help="Study size: micro (test), demo (CPU, <= 15 min), paper (GPU).")
    ] = "demo",
    out: Annotated[Path | None, typer.Option(help="Output directory (default: ./PRESET).")] = None,
    device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress display.")] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            help="I/N: only generate the I-th of N trajectory ranges of every data file (one "
            "array-job task of N); a later run without --shard merges them and goes on."
        ),
    ] = None,
) -> None:
    """Generate data, train UNet / ViT / G-CNN over several seeds, audit them, write a report.

    Every unit of work records a manifest under OUT/manifests; rerunning skips what is
    unchanged, so a killed run resumes where it stopped. See docs/reproduce.md.
    """
    from symaudit.pipeline import reproduce as run

    target = out if out is not None else Path(preset)
    if shard is not None:
        from symaudit.data.generate import parse_shard
        from symaudit.pipeline import PRESETS
        from symaudit.pipeline.run import generate_shard

        try:
            if preset not in PRESETS:
                raise ValueError(f"unknown preset {preset!r}; have {sorted(PRESETS)}")
            files = generate_shard(PRESETS[preset], target, parse_shard(shard), device=device)
        except ValueError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None
        typer.echo(f"shard {shard}: wrote {len(files)} shard files under {target / 'data'}")
        return
    try:
        res = run(
            preset, target, device=device, progress=not quiet, log=None if quiet else typer.echo
        )
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    typer.echo(
        f"done: {len(res.ran)} units ran, {len(res.skipped)} unchanged; report: {res.report}"
    )
