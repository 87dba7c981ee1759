"""The `symaudit` typer application; each command lives in its own module of this package.

Every command registered on `app` is wrapped by `_one_line_errors`: a `SymauditError`, a
`ValueError` or an `OSError` (full disk, read-only directory, a file where a directory is
expected) ends the command with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from symaudit.errors import SymauditError

_USER_ERRORS = (SymauditError, ValueError, OSError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the message


def _one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)  # typer reads the signature through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _USER_ERRORS as exc:
            typer.secho(f"error: {_describe(exc)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return run


class _App(typer.Typer):
    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable], Callable]:
        register = super().command(*args, **kwargs)

        def decorator(f: Callable) -> Callable:
            register(_one_line_errors(f))
            return f

        return decorator


app = _App(
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
