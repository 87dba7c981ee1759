"""Augmentation by a chosen subset of D4 (`TrainConfig.augment_elements`).

With ``augment="d4"`` every training sample is transformed, input and targets alike, by an
element drawn uniformly from the draw set: all eight elements by default, or the identity
plus the listed elements (so the listed elements are what the model is *taught*, and the
untransformed data stay in the mix at the same 1/(k+1) rate as each listed element). The
seven non-identity elements give exactly the draws of the full augmentation (same order, same
random numbers).
"""

from __future__ import annotations

from collections.abc import Sequence

from symaudit.groups._base import D4_NAMES, GroupElement

__all__ = ["D4_ORDER", "check_augment_elements", "d4_draw_elements"]

#: D4's element names in group order (`symaudit.groups.Dihedral4`)
D4_ORDER: tuple[str, ...] = tuple(D4_NAMES.values())


def check_augment_elements(names: Sequence[str] | None, augment: str) -> list[str] | None:
    """Validated ``augment_elements``: None (all of D4) or distinct non-identity D4 names,
    returned in group order (so equal subsets give equal configurations and digests)."""
    if names is None:
        return None
    if isinstance(names, str):
        raise ValueError(f"augment_elements must be a list of D4 element names, got {names!r}")
    names = [str(n) for n in names]
    if "d4" not in augment:
        raise ValueError(
            f"augment_elements {names} needs a D4 augmentation (augment 'd4' or 'd4+shift'), "
            f"got augment {augment!r}"
        )
    unknown = [n for n in names if n not in D4_ORDER]
    if unknown:
        raise ValueError(f"augment_elements: unknown D4 elements {unknown}; have {D4_ORDER}")
    if "e" in names:
        raise ValueError("augment_elements: the identity 'e' is always drawn; list the others")
    if len(set(names)) != len(names):
        raise ValueError(f"augment_elements lists an element twice: {names}")
    return [n for n in D4_ORDER if n in names]


def d4_draw_elements(d4, names: Sequence[str] | None) -> list[GroupElement]:
    """The elements a draw index 0..k picks from: all of ``d4`` (a `Dihedral4`) for None,
    else the identity followed by ``names`` (validated, group order)."""
    if names is None:
        return list(d4)
    return [d4["e"], *(d4[n] for n in names)]
