"""The `symaudit` typer application; each command lives in its own module of this package."""

import typer

app = typer.Typer(
    name="symaudit",
    help=(
        "Audit neural PDE emulators for learned symmetry: generate compressible-Euler data, "
        "train emulators, and measure equivariance errors and NTK-metric influence along "
        "symmetry orbits."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """symaudit: has your PDE emulator learned the symmetries of the physics?"""
