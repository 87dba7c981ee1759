"""`symaudit check-data`: the symmetry of the data generator behind dataset files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from symaudit.cli._app import app


@app.command("check-data")
def check_data(
    files: Annotated[
        list[Path], typer.Argument(help="Dataset files: ours (.h5), PDEGym .nc, The Well.")
    ],
    out: Annotated[Path, typer.Option(help="Directory for check.json, the figure and index.html.")],
    group: Annotated[
        list[str] | None,
        typer.Option(help="Group spec, repeatable (default d4, shift-x:8, shift-y:8)."),
    ] = None,
    boost: Annotated[
        list[str] | None,
        typer.Option(help="Boost spec for the paired check, repeatable, e.g. boost:0.3125,0."),
    ] = None,
    trajectories: Annotated[
        int, typer.Option(help="Use the first N trajectories of each file.")
    ] = 8,
    step: Annotated[int, typer.Option(help="Snapshot index of the paired transitions.")] = 0,
    paired: Annotated[
        str, typer.Option(help="Re-run our solver: auto (our files), yes or no.")
    ] = "auto",
    resolution: Annotated[
        int | None, typer.Option(help="Block-average other formats to N x N (statistical only).")
    ] = None,
    alpha: Annotated[float, typer.Option(help="False-alarm rate of the statistical flags.")] = 1e-3,
    audit: Annotated[
        list[Path] | None,
        typer.Option(help="Audit directory, repeatable: table its E_g against the floor."),
    ] = None,
) -> None:
    """Measure how symmetric the data generator is: re-run our solver from paired transformed
    states (D4, shifts, boosts), and compare the distribution of transformed snapshots with the
    original (any file). The result is the floor against which a model's E_g is read."""
    import torch

    from symaudit.data.check_files import check_files
    from symaudit.report.data_check import build_check_page, check_rows

    torch.set_flush_denormal(True)
    result = check_files(
        files,
        groups=group or ["d4", "shift-x:8", "shift-y:8"],
        boosts=boost or [],
        trajectories=trajectories,
        step=step,
        paired=paired,
        resolution=resolution,
        alpha=alpha,
        log=typer.echo,
    )
    from symaudit.diagnostics.audit import load_audit

    page = build_check_page(out, result, [load_audit(a) for a in audit or []])
    pairs, stats = check_rows(result)
    broken = sorted({f"{r['file']}:{r['element']}" for r in pairs if r["broken"]})
    flagged = sorted({f"{r['file']}:{r['element']}" for r in stats if r["flag"]})
    typer.echo(f"paired: {len(pairs)} element checks, generator breaks: {broken or 'none'}")
    typer.echo(f"statistical: distribution not invariant under: {flagged or 'none'}")
    typer.echo(f"wrote {page}")
