"""`symaudit augment`: influence-guided D4 augmentation against none, full D4 and chance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from symaudit.cli._app import app


@app.command()
def augment(
    preset: Annotated[
        str, typer.Option(help="augment (CPU, ~30 min) or augment-micro (seconds, for tests).")
    ] = "augment",
    out: Annotated[Path | None, typer.Option(help="Output directory (default: ./PRESET).")] = None,
    rule: Annotated[
        str | None,
        typer.Option(
            help="Which g != e to augment by, from their cross-influence median_i M^g_ii / "
            "M^e_ii in the un-augmented model's audit: below:T (< T), relative:T (< T x the "
            "mean of the seven) or lowest:K (the K lowest). Default: the preset's, lowest:3."
        ),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Comma-separated training seeds (default: the preset's).")
    ] = None,
    random_subsets: Annotated[
        int | None, typer.Option(help="Random subsets of the same size per seed.")
    ] = None,
    device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress display.")] = False,
) -> None:
    """Train without augmentation, audit D4 influence, pick the low-influence elements, retrain
    augmented by them only, and compare (same steps, same seeds) with no augmentation, full
    D4 and random subsets of the same size. Resumable; see docs/augment.md."""
    from symaudit.pipeline.augment import augment as run

    seed_list = None
    if seeds is not None:
        try:
            seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    res = run(
        preset,
        out if out is not None else Path(preset),
        device=device,
        rule=rule,
        seeds=seed_list,
        random_subsets=random_subsets,
        progress=not quiet,
        log=None if quiet else typer.echo,
    )
    typer.echo(f"done: {len(res.ran)} units ran, {len(res.skipped)} unchanged; table: {res.report}")
