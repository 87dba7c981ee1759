"""One finiteness check for data, losses and model outputs: name the first bad entry."""

from __future__ import annotations

from collections.abc import Callable

import torch

from symaudit.errors import NonFiniteError

__all__ = ["require_finite"]


def require_finite(
    x: torch.Tensor, what: str, where: Callable[[tuple[int, ...]], str] | None = None
) -> None:
    """Raise `NonFiniteError` if ``x`` holds NaN or ±inf.

    ``where`` turns the index of the first bad entry into words (e.g. "trajectory 3,
    snapshot 7"); without it the index itself is shown.
    """
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    index = tuple(int(i) for i in bad.nonzero()[0])
    value = float(x[index])
    place = where(index) if where is not None else f"index {index}"
    count = int(bad.sum())
    raise NonFiniteError(f"{what}: {value} at {place} ({count} non-finite values in all)")
