"""Which translations an influence audit looks at, chosen by rule from the architectures.

Forward equivariance errors are cheap (forward passes) and are computed for every shift of
the grid. Influence needs a gradient per transformed state, so it is computed on a subset.
A subset must be able to *see* each architecture's natural period p — the ViT's patch size
(a shift by a multiple of p moves whole patches; anything else cuts them) and the UNet's
total down-sampling factor 2^(levels-1) (exactly shift-equivariant by multiples of it) — so
it has to contain shifts aligned with p and shifts that are not. `influence_shift_set`:

    q = min(P) // 2,   S = {0, 1} ∪ {k q : 0 <= k q <= 2 max(P)}   (reduced below the grid size)

with P the study's periods > 1. Every period p in P has aligned non-zero shifts in S (p, and
2p for the smallest) and non-aligned ones (the odd multiples of q = min(P)/2, and 1, are
aligned with no period). E.g. ViT patch 8 and UNet factor 16 at 64²:
S = {0, 1, 4, 8, 12, 16, 20, 24, 28, 32}.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["influence_shift_set", "natural_period"]


def natural_period(model_config: dict[str, Any]) -> int | None:
    """The shift period a model's architecture singles out: ViT patch size, UNet total
    down-sampling factor; None for architectures without one (e.g. the exact G-CNN)."""
    arch, kw = model_config.get("architecture"), model_config.get("kwargs", {})
    if arch == "vit":
        return int(kw["patch"])
    if arch == "unet":
        return 2 ** (len(kw.get("mults", (1, 2, 2, 2, 1))) - 1)
    return None


def influence_shift_set(periods: Iterable[int | None], size: int) -> list[int]:
    """The rule-chosen shifts (sorted, < ``size``) for the influence audit of a study whose
    architectures have the given natural periods (module docstring); all shifts when no
    period exceeds 1."""
    ps = sorted({int(p) for p in periods if p is not None and p > 1})
    if not ps:
        return list(range(size))
    q = max(1, ps[0] // 2)
    top = min(2 * ps[-1], size - 1)
    return sorted({0, min(1, size - 1), *range(0, top + 1, q)})
