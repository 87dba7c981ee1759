"""`symaudit models`: list the model presets with their parameter counts."""

from __future__ import annotations

from typing import Annotated

import typer

from symaudit.cli._app import app


@app.command("models")
def list_models(
    resolution: Annotated[
        int | None,
        typer.Option(help="Grid size for resolution-dependent models (ViT); default: preset's."),
    ] = None,
    arguments: Annotated[
        bool, typer.Option("--arguments", help="Also show constructor arguments.")
    ] = False,
) -> None:
    """List model presets with architecture and parameter count (counted at construction)."""
    from rich.console import Console
    from rich.table import Table

    from symaudit.models import PRESETS, build, num_parameters

    table = Table(title="symaudit model presets")
    columns = ["preset", "architecture", "parameters", "grid", "description"]
    for col in columns + (["arguments"] if arguments else []):
        table.add_column(col, justify="right" if col == "parameters" else "left")
    for name, preset in PRESETS.items():
        kwargs = dict(preset.kwargs)
        grid = "any (H, W divisible by 16)" if preset.architecture == "unet" else "any"
        if preset.architecture == "vit":
            if resolution is not None:
                kwargs["resolution"] = resolution
            grid = f"{kwargs['resolution']}² only"
        try:
            count = f"{num_parameters(build(name, **kwargs)):,}"
        except ValueError as exc:  # e.g. a resolution the patch size does not divide
            count = f"n/a ({exc})"
        row = [name, preset.architecture, count, grid, preset.description]
        if arguments:
            row.append(", ".join(f"{k}={v}" for k, v in kwargs.items()))
        table.add_row(*row)
    Console().print(table)
