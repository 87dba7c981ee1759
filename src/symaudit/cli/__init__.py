"""Command-line interface: `symaudit COMMAND --help` explains each command.

Command modules register themselves on the shared typer app when imported; keep their
top-level imports light (torch is imported inside the commands) so `--help` is fast.
"""

from symaudit.cli._app import app

# isort: split
# Each import below registers one command (or a few) on `app`.
# (command modules are added here as they are written)
from symaudit.cli import (  # noqa: E402,F401
    ablation,
    audit,
    augment,
    boosts,
    check_data,
    estimate,
    generate,
    models,
    report,
    reproduce,
    train,
    training_time,
)

__all__ = ["app", "main"]


def main() -> None:
    app()
