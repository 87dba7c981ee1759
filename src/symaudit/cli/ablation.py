"""`symaudit patch-ablation`: ViTs with patch 4, 8, 16; does the translation period follow p?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from symaudit.cli._app import app


@app.command("patch-ablation")
def patch_ablation(
    preset: Annotated[
        str, typer.Option(help="patches (CPU, ~40 min) or patches-micro (seconds, for tests).")
    ] = "patches",
    out: Annotated[Path | None, typer.Option(help="Output directory (default: ./PRESET).")] = None,
    device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress display.")] = False,
) -> None:
    """Train and audit (shift-x, shift-y) ViTs that differ only in patch size, then measure
    the period of each one's translation error and influence profiles (OUT/periods/).
    Resumable; data generated with the demo's settings can be copied into OUT/data."""
    from symaudit.pipeline.ablation import patch_ablation as run

    res = run(
        preset,
        out if out is not None else Path(preset),
        device=device,
        progress=not quiet,
        log=None if quiet else typer.echo,
    )
    typer.echo(f"done: {len(res.ran)} units ran, {len(res.skipped)} unchanged; page: {res.report}")
