"""Symmetry groups acting on physical fields `(..., C, H, W)` described by a `FieldLayout`.

``Dihedral4(layout)``, ``Translations(layout, axis, shifts)``, ``GalileanBoost(layout,
velocity, dt)``; products ``G * H``; ``from_spec("d4*shift-xy:8", layout, resolution=64)``.
Elements: ``g.name``, ``g(x)``, ``g * h`` (apply h, then g), ``g.inverse()``.
"""

from symaudit.groups._base import Group, GroupElement, GroupError, UnknownElementError, product
from symaudit.groups.dihedral import Dihedral4
from symaudit.groups.galilean import GalileanBoost
from symaudit.groups.spec import (
    SPEC_HELP,
    from_spec,
    is_translation,
    parse_spec,
    spec_kinds,
    translation_axes,
)
from symaudit.groups.translations import Translations

__all__ = [
    "SPEC_HELP",
    "Dihedral4",
    "GalileanBoost",
    "Group",
    "GroupElement",
    "GroupError",
    "Translations",
    "UnknownElementError",
    "from_spec",
    "is_translation",
    "parse_spec",
    "product",
    "spec_kinds",
    "translation_axes",
]
