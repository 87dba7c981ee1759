"""Galilean boosts of conservative compressible-Euler states."""

from __future__ import annotations

from collections.abc import Iterable

from symaudit.fields import FieldLayout
from symaudit.groups._actions import euler_channels
from symaudit.groups._base import Group, GroupElement, GroupError

__all__ = ["GalileanBoost"]


class GalileanBoost(Group):
    """Boosts by k c (k in ``multiples``) of Euler states observed at time ``dt``.

    If U(x, t) solves the Euler equations, so does U'(x, t) = T_(c t) K_c U(x, t):

        rho'(x) = rho(x - c t),   m'(x) = m(x - c t) + rho(x - c t) c,
        E'(x)   = E(x - c t) + c . m(x - c t) + 1/2 rho(x - c t) |c|^2.

    Elements act on states at time ``dt`` (shift c dt); ``g.at_time(0)`` is the pure kick for
    states at the start. The domain is the unit square, so on an N x N grid c dt N must be a
    whole number of cells (`GroupError` at action time otherwise): shocked fields cannot be
    interpolated. Boosts at one time compose by adding velocities; ``multiples`` is the subset
    iterated (default: identity and the boost by c).

    Args:
        layout: must be conservative Euler (rho, momentum, E) — `LayoutError` otherwise.
        velocity: c = (c_x, c_y) in domain lengths per unit time.
        dt: observation time of the boost (the emulator's step for transitions).
    """

    def __init__(
        self,
        layout: FieldLayout,
        velocity: tuple[float, float],
        dt: float,
        *,
        multiples: Iterable[int] = (0, 1),
    ) -> None:
        euler_channels(layout)
        try:
            cx, cy = (float(v) for v in velocity)
        except (TypeError, ValueError):
            raise GroupError(f"velocity must be a pair (c_x, c_y), got {velocity!r}") from None
        multiples = [int(k) for k in multiples]
        super().__init__(
            [GroupElement(layout, velocity=(k * cx, k * cy), time=float(dt)) for k in multiples],
            name=f"boost({cx:g},{cy:g})",
            layout=layout,
            spec={"kind": "boost", "velocity": [cx, cy], "dt": float(dt), "multiples": multiples},
        )
