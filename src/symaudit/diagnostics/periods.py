"""The period of a model's translation profile: does it follow the ViT's patch size?

For a translation audit (`symaudit.diagnostics.audit`, groups "shift-x"/"shift-y") two
profiles over the shift s:

- the error profile, over every shift 0..L-1 of the grid:
  e(s) = mean_i log(E_s(x_i) / E_0(x_i)), the log-ratio of transformed to untransformed
  error averaged over the test states (scale-free, so CE-RPUI's large errors do not own it);
- the influence profile, over the audit's rule-chosen influence shifts:
  ρ(s) = median_i M^s_ii / M^e_ii (`symaudit.diagnostics.augmentation.cross_influence`).

**Measured period** (`period_scan`): a one-way analysis of variance of the profile grouped by
residue class s mod p, for every candidate p dividing L (2 <= p <= L/2):

    F(p) = [SS_between / (g_p - 1)] / [SS_within / (n - g_p)]

(g_p residue classes present among the n shifts). A profile with period p puts its variance
between the classes mod p; a multiple 2p explains no more of it with twice the degrees of
freedom and a divisor p/2 mixes aligned and non-aligned shifts, so F peaks at the period
itself. The measured period is argmax F; candidates with fewer than ``min_within`` within-class
degrees of freedom are skipped (F is meaningless with almost none). ``aligned_contrast(p)``:
mean profile at shifts ≡ 0 mod p (s ≠ 0) minus the mean at the others.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["aligned_contrast", "period_scan", "shift_of", "translation_profiles"]

_SHIFT_NAME = re.compile(r"^t[xy](-?\d+)$")


def shift_of(name: str) -> int:
    """The shift of a one-axis translation element named "e", "tx<k>" or "ty<k>"."""
    if name == "e":
        return 0
    m = _SHIFT_NAME.match(name)
    if not m:
        raise ValueError(f"{name!r} is not a one-axis translation element (e, tx<k>, ty<k>)")
    return int(m[1])


def period_scan(
    shifts: Sequence[int],
    values: Sequence[float],
    size: int,
    *,
    min_within: int = 3,
) -> dict[str, Any]:
    """F(p) of the profile ``values`` at ``shifts`` (module docstring) for every divisor p of
    ``size`` with 2 <= p <= size/2; returns ``{"F": {p: F}, "period": argmax or None}``."""
    s = np.asarray(shifts, dtype=np.int64) % size
    v = np.asarray(values, dtype=np.float64)
    if s.shape != v.shape or v.ndim != 1:
        raise ValueError(f"shifts {s.shape} and values {v.shape} must be matching 1-d arrays")
    if not np.isfinite(v).all():
        raise ValueError("the profile has non-finite values")
    scores: dict[int, float] = {}
    for p in range(2, size // 2 + 1):
        if size % p:
            continue
        classes = s % p
        labels = np.unique(classes)
        g, n = len(labels), len(v)
        if g < 2 or n - g < min_within:
            continue
        means = {c: v[classes == c].mean() for c in labels}
        between = sum((classes == c).sum() * (means[c] - v.mean()) ** 2 for c in labels)
        within = sum(((v[classes == c] - means[c]) ** 2).sum() for c in labels)
        # an exactly p-periodic profile has no within-class variance: F = inf for p and its
        # multiples, and the tie goes to the smallest (the period); a flat one explains nothing
        if between <= 0:
            scores[p] = 0.0
        elif within <= 0:
            scores[p] = float("inf")
        else:
            scores[p] = float((between / (g - 1)) / (within / (n - g)))
    best = max(scores, key=lambda p: (scores[p], -p)) if scores else None
    return {"F": scores, "period": best}


def aligned_contrast(shifts: Sequence[int], values: Sequence[float], p: int) -> dict[str, Any]:
    """Mean of ``values`` at shifts ≡ 0 mod p other than 0, at the rest (non-aligned), and the
    difference aligned − non-aligned (None where a side is empty)."""
    s, v = np.asarray(shifts), np.asarray(values, dtype=np.float64)
    aligned = v[(s % p == 0) & (s != 0)]
    other = v[s % p != 0]
    a = float(aligned.mean()) if aligned.size else None
    o = float(other.mean()) if other.size else None
    return {
        "aligned": a,
        "non_aligned": o,
        "difference": None if a is None or o is None else a - o,
        "aligned_shifts": int(aligned.size),
        "non_aligned_shifts": int(other.size),
    }


def translation_profiles(audit_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Per translation group of the audit ("shift-x", "shift-y"): the error profile over
    every shift, pooled and per family, and the influence profile over the influence shifts
    (module docstring), plus the grid size L."""
    from symaudit.diagnostics.audit import load_audit
    from symaudit.diagnostics.augmentation import cross_influence

    rec = load_audit(audit_dir)
    out: dict[str, dict[str, Any]] = {}
    for spec, eqs in rec.equivariance.items():
        kind = eqs[0].group.get("spec", {})
        if kind.get("kind") != "translations" or kind.get("axis") not in ("x", "y"):
            continue
        size = kind.get("size") or len(eqs[0].elements)  # all shifts of the grid are audited
        shifts = [shift_of(n) for n in eqs[0].elements]
        fams = [p["family"] for p in rec.meta["pieces"][spec]]
        log_ratio = []
        for eq in eqs:
            err = eq.error.double().numpy()
            log_ratio.append(np.log(err / err[eq.index("e")]))
        pooled = np.concatenate(log_ratio, axis=1)
        per_family = {
            f: np.concatenate([r for r, g in zip(log_ratio, fams, strict=True) if g == f], axis=1)
            for f in dict.fromkeys(fams)
        }
        rho = cross_influence(audit_dir, spec)
        inf_shifts = sorted((shift_of(n), n) for n in rho)
        out[spec] = {
            "size": size,
            "shifts": shifts,
            "error_profile": pooled.mean(axis=1).tolist(),
            "error_profile_by_family": {f: v.mean(axis=1).tolist() for f, v in per_family.items()},
            "influence_shifts": [s for s, _ in inf_shifts],
            "influence_profile": [float(np.median(rho[n])) for _, n in inf_shifts],
        }
    return out
