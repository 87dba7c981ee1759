"""The dihedral group D4 of the square grid, acting about the domain centre."""

from __future__ import annotations

from symaudit.fields import FieldLayout
from symaudit.groups._base import D4_NAMES, Group, GroupElement

__all__ = ["Dihedral4"]


class Dihedral4(Group):
    """D4 = {e, r, r2, r3, s, rs, r2s, r3s} on `(..., C, H, W)` fields (in that order).

    r is the counter-clockwise rotation by pi/2 about the domain centre, (x, y) -> (-y, x);
    s the reflection about the vertical axis, (x, y) -> (-x, y); ``rs`` = r * s (s first).
    Scalars move with the grid; each vector of the layout also has its components mixed:
    (g v)(p) = A v(A^-1 p). Odd rotations need a square grid (`LayoutError` otherwise).
    """

    def __init__(self, layout: FieldLayout) -> None:
        super().__init__(
            [GroupElement(layout, rot=k, flip=m) for (k, m) in D4_NAMES],
            name="D4",
            layout=layout,
            spec={"kind": "d4"},
        )

    def rotations(self) -> Group:
        """The cyclic subgroup C4 = {e, r, r2, r3}."""
        return self.subgroup(["e", "r", "r2", "r3"], name="C4")
