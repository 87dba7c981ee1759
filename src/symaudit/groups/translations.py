"""Periodic whole-cell translations."""

from __future__ import annotations

from collections.abc import Iterable

from symaudit.fields import FieldLayout
from symaudit.groups._base import Group, GroupElement, GroupError

__all__ = ["Translations"]


class Translations(Group):
    """Periodic shifts by whole cells: (T_s f)(p) = f(p - s), ``out[j, i] = in[j-s_y, i-s_x]``.

    Args:
        layout: the fields' layout (a shift moves every channel alike).
        axis: ``"x"`` (last axis), ``"y"`` (second-last), or ``"xy"`` (all pairs (s_x, s_y)
            from ``shifts``, s_x varying fastest).
        shifts: any collection of integer shifts, iterated in the given order.
        size: the grid size N, if known. Then elements are in Z_N (shifts reduced mod N, and
            they act only on N x N grids), so e.g. ``range(0, N, 8)`` is closed. Without it,
            elements are in Z: they act on any grid through the periodic roll, but
            compositions are not reduced, so a finite subset of shifts is never closed.
    """

    def __init__(
        self,
        layout: FieldLayout,
        axis: str,
        shifts: Iterable[int],
        *,
        size: int | None = None,
    ) -> None:
        shifts = list(shifts)
        bad = [s for s in shifts if int(s) != s]
        if bad:
            raise GroupError(f"translations are whole cells; got non-integer shifts {bad}")
        shifts = [int(s) for s in shifts]
        if axis == "x":
            pairs = [(s, 0) for s in shifts]
        elif axis == "y":
            pairs = [(0, s) for s in shifts]
        elif axis == "xy":
            pairs = [(sx, sy) for sy in shifts for sx in shifts]
        else:
            raise GroupError(f"axis must be 'x', 'y' or 'xy', got {axis!r}")
        super().__init__(
            [GroupElement(layout, shift=p, period=size) for p in pairs],
            name=f"shift-{axis}",
            layout=layout,
            spec={"kind": "translations", "axis": axis, "shifts": shifts, "size": size},
        )
