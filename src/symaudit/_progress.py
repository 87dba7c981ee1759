"""The one progress bar of every long job (generation, training, audits, the pipeline)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_bar"]


def progress_bar(
    enabled: bool,
    *fields: str,
    count: bool = True,
    eta: bool = True,
    transient: bool = False,
    stderr: bool = False,
) -> Any:
    """A `rich.progress.Progress` (a context manager; ``add_task``/``update``/``advance``),
    shown only when ``enabled``: the description, a bar, done/total (``count``) or a
    percentage, one text column per item of ``fields`` (rich templates such as
    ``"t = {task.fields[t]:.3f}"``), elapsed time and, with ``eta``, the time remaining."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn() if count else TextColumn("{task.percentage:>3.0f}%"),
        *(TextColumn(f) for f in fields),
        TimeElapsedColumn(),
    ]
    if eta:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    console = Console(file=sys.stderr) if stderr else None
    return Progress(*columns, disable=not enabled, transient=transient, console=console)
