"""Choosing D4 augmentation elements from an audit, and scoring a model on the whole orbit.

Cross-influence of an element g on a test state x_i (raw influence, `InfluenceResult.raw`):

    ρ_g(x_i) = M^g_ii / M^e_ii = ∇C_{x_i}ᵀ χ⁻¹ ∇C_{g x_i} / ∇C_{x_i}ᵀ χ⁻¹ ∇C_{x_i}

the first-order loss change at g·x_i per unit of loss change at x_i when training on x_i:
1 when a step on x_i teaches g·x_i as much as x_i itself, 0 when it teaches it nothing,
< 0 when it un-teaches it. Per element, ρ_g = the median over every test state of the audit
(all families and mini-batches; the ratio is scale-free, so families of very different field
magnitudes pool fairly).

**Selection rule** (`select_elements`): augment by the elements g ≠ e whose ρ_g is below a
threshold — the elements the model does not learn from the data it has, which augmentation
must teach. The threshold is one of

- ``below:T``     ρ_g < T (absolute; e.g. below:0.5, "a step on x teaches g x less than half
                  of what it teaches x");
- ``relative:T``  ρ_g < T · mean_{g≠e} ρ_g (less coupled than T times the average element);
- ``lowest:K``    the K elements of lowest ρ_g (threshold = the (K+1)-th lowest; ties by D4
                  order) — a fixed augmentation budget, the default (``lowest:3``): in the
                  32² UNet every ρ_g was < 0.25, so an absolute 0.5 chose all seven.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from symaudit.training.augment_subset import D4_ORDER

RULES = ("below", "relative", "lowest")

__all__ = [
    "RULES",
    "choose_subsets",
    "cross_influence",
    "orbit_errors",
    "parse_rule",
    "random_subsets",
    "select_elements",
]


def cross_influence(audit_dir: str | os.PathLike, spec: str = "d4") -> dict[str, np.ndarray]:
    """Per element of the audited group ``spec``, ρ_g(x_i) for every test state `(N,)`
    (pooled over the audit's mini-batches in order; module docstring)."""
    from symaudit.diagnostics.audit import AuditError, load_audit

    rec = load_audit(audit_dir)
    if spec not in rec.influence:
        raise AuditError(
            f"{audit_dir}: no influence for group {spec!r} (have {list(rec.influence)})"
        )
    per: dict[str, list[np.ndarray]] = {}
    for res in rec.influence[spec]:
        if "e" not in res.elements:
            raise AuditError(f"{audit_dir}: influence of {spec!r} lacks the identity")
        raw = res.raw.double()
        self_inf = raw[res.elements.index("e")].diagonal()
        if not bool((self_inf > 0).all()):
            raise AuditError(
                f"{audit_dir}: a self-influence M^e_ii is not positive (zero gradient?): "
                "cross-influence ratios are undefined"
            )
        for k, g in enumerate(res.elements):
            per.setdefault(g, []).append((raw[k].diagonal() / self_inf).numpy())
    return {g: np.concatenate(v) for g, v in per.items()}


def parse_rule(rule: str) -> tuple[str, float]:
    """``"below:T"``, ``"relative:T"`` or ``"lowest:K"`` → (kind, number); ValueError naming
    the problem otherwise."""
    kind, _, num = str(rule).partition(":")
    try:
        value = float(num)
    except ValueError:
        value = math.nan
    if kind not in RULES or not math.isfinite(value):
        raise ValueError(
            f"selection rule must be below:T, relative:T or lowest:K with a finite number, "
            f"got {rule!r}"
        )
    if kind == "lowest" and (value != int(value) or not 0 <= value <= 7):
        raise ValueError(f"selection rule lowest:K needs an integer K in 0..7, got {rule!r}")
    return kind, value


def select_elements(scores: dict[str, float], rule: str) -> list[str]:
    """The non-identity elements chosen by ``rule`` (module docstring) from their
    cross-influence ``scores[g]``, in D4 order."""
    kind, value = parse_rule(rule)
    bad = [g for g, v in scores.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"cross-influence of {bad} is not finite")
    others = [g for g in D4_ORDER if g != "e" and g in scores]
    if kind == "lowest":
        chosen = set(sorted(others, key=lambda g: scores[g])[: int(value)])  # stable: D4 order
    else:
        cut = value if kind == "below" else value * float(np.mean([scores[g] for g in others]))
        chosen = {g for g in others if scores[g] < cut}
    return [g for g in others if g in chosen]


def random_subsets(k: int, count: int, seed: int) -> list[list[str]]:
    """``count`` distinct k-subsets of D4's seven non-identity elements, drawn uniformly
    without replacement from all C(7, k) (fewer if there are fewer), seeded by ``seed``."""
    others = [g for g in D4_ORDER if g != "e"]
    combos = [list(c) for c in itertools.combinations(others, k)]
    return random.Random(1_000_003 * int(seed) + 7).sample(combos, min(count, len(combos)))


def choose_subsets(
    audit_dir: str | os.PathLike, rule: str, count: int, seed: int
) -> dict[str, Any]:
    """The selection record of one seed: every element's cross-influence (median and the
    per-state values), the rule, the chosen elements and ``count`` random subsets of the
    same size."""
    rho = cross_influence(audit_dir)
    scores = {g: float(np.median(v)) for g, v in rho.items()}
    chosen = select_elements(scores, rule)
    return {
        "audit": str(audit_dir),
        "statistic": "median_i M^g_ii / M^e_ii",
        "rule": rule,
        "scores": scores,
        "per_state": {g: v.tolist() for g, v in rho.items()},
        "influence": chosen,
        "random": random_subsets(len(chosen), count, seed),
        "seed": seed,
    }


@torch.no_grad()
def orbit_errors(
    run_dir: str | os.PathLike,
    test_data: Sequence[str | os.PathLike],
    *,
    device: torch.device | str = "cpu",
    batch: int = 64,
) -> dict[str, dict[str, Any]]:
    """E_g of a trained run on *every* transition of the test trajectories, for every element
    of D4: per family, ``error[g]`` = mean over transitions of SMSE(f(g x_t), g x_t+1) and
    ``persistence`` = mean SMSE(x_t, x_t+1) (D4-invariant: SMSE shares one scale per
    vector). Transitions: all consecutive pairs in the run's training window."""
    from symaudit.data.store import open_dataset
    from symaudit.data.transitions import expand_paths, parse_snapshots
    from symaudit.diagnostics.equivariance import equivariance_error
    from symaudit.groups import Dihedral4
    from symaudit.training import SMSE, load_checkpoint

    model, info = load_checkpoint(Path(run_dir) / "checkpoint.pt", map_location=device)
    loss = SMSE(info.channel_rms).to(device)
    d4 = Dihedral4(info.layout)
    sel = parse_snapshots(info.config.get("snapshots"))
    out: dict[str, dict[str, Any]] = {}
    for path in expand_paths(list(test_data)):
        with open_dataset(path) as ds:
            idx = list(range(ds.num_snapshots))
            idx = idx[sel] if sel is not None else idx
            traj = ds.read(list(range(ds.num_trajectories)), idx)  # (n, T, C, H, W)
            fam = str(ds.metadata.get("ic_kind", path.stem))
        x, y = traj[:, :-1].flatten(0, 1), traj[:, 1:].flatten(0, 1)
        sums = torch.zeros(len(d4), dtype=torch.float64)
        for a in range(0, x.shape[0], batch):
            eq = equivariance_error(model, (x[a : a + batch], y[a : a + batch]), d4, loss)
            sums += eq.error.sum(dim=1)
        out[fam] = {
            "transitions": int(x.shape[0]),
            "error": dict(zip(d4.names, (sums / x.shape[0]).tolist(), strict=True)),
            "persistence": float(loss.per_sample(x, y).double().mean()),
        }
    return out
