"""`symaudit report`: figures, findings and an HTML page from audit directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from symaudit.cli._app import app


@app.command()
def report(
    audits: Annotated[list[Path], typer.Argument(help="Audit directories (symaudit audit --out).")],
    out: Annotated[Path, typer.Option(help="Report directory (index.html, figures, report.json).")],
) -> None:
    """Write the paper's figures (PNG + SVG), the findings F1-F8 and index.html for AUDITS.

    Models are pooled over seeds and test mini-batches; every number shown is also in
    OUT/report.json. See docs/reproduce.md for the criteria of the findings.
    """
    from symaudit.diagnostics.audit import AuditError
    from symaudit.report import build_report

    try:
        path = build_report(audits, out)
    except (AuditError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"report written to {path}")
