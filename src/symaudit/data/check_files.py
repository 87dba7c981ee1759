"""`check_files`: the symmetry of the data generator behind dataset files (`symaudit
check-data`). For every file:

* **paired** (files written by our solver, ``symaudit generate``): the solver is re-run from
  the stored states x_t and from g x_t over one snapshot interval, D_g^data =
  SMSE(S(g x_t), g S(x_t)) in the SMSE units of the file's channel RMS (`SolverStep`,
  `paired_check`); an element is broken by the generator when the median D_g exceeds
  ``tolerance``. Boosts are included when a boost spec is given (their c dt N must be whole).
* **statistical** (any file: ours, PDEGym ``.nc``, The Well): `distribution_asymmetry` of the
  snapshots under the non-boost groups.

The result is a JSON-able dict; `symaudit.report.data_check` renders it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from symaudit.data.symmetry_check import SolverStep, distribution_asymmetry
from symaudit.groups import Group, from_spec
from symaudit.training.loss import SMSE

__all__ = ["DEFAULT_TOLERANCE", "check_files", "paired_check"]

#: Median D_g (SMSE units, i.e. relative to the squared channel RMS) above which the generator
#: breaks g. 1e-16 is a relative rms difference of 1e-8: float64 round-off (1e-16) may grow by
#: 10^8 over one interval's solver steps in a mathematically equivariant but not bit-mirrored
#: scheme and still pass; D4-breaking schemes are at 1e-6 and above (a dimensionally split
#: step at 16^2: see tests/test_symmetry_check.py), ours is exactly 0.0 for D4 and shifts.
DEFAULT_TOLERANCE = 1e-16


def paired_check(
    generator: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    group: Group,
    loss: SMSE,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """D_g and E_g of a generator module (e.g. `SolverStep`) on transitions ``batch``
    `(N, C, H, W)` x 2, in float64.

    Returns ``(msd, rows)``: ``msd["defect"]``, ``msd["error"]`` `(|G|, N, C)` the per-channel
    mean squared differences of S(g x_t) against g S(x_t) and against the stored g x_t+1 (so
    the floor can be re-expressed in any model's SMSE units: mean_c msd_c / rms_c^2), and per
    element {"defect": median D_g, "defect_max", "error": median E_g, "broken": median D_g >
    tolerance} in the units of ``loss``."""
    x, y = (t.to(torch.float64) for t in batch)
    weights = 1.0 / loss.channel_rms.to(torch.float64).square()
    was = generator.training
    generator.eval()
    out = {"defect": [], "error": []}
    try:
        with torch.no_grad():
            sx = generator(x)
            for g in group:
                gx, gy = g.transition(x, y)
                pred = generator(gx)
                out["defect"].append((pred - g(sx)).square().mean((-2, -1)))
                out["error"].append((pred - gy).square().mean((-2, -1)))
    finally:
        generator.train(was)
    msd = {k: torch.stack(v).cpu() for k, v in out.items()}
    rows = {}
    for i, g in enumerate(group):
        d = (msd["defect"][i] * weights).mean(-1)
        rows[g.name] = {
            "defect": float(d.median()),
            "defect_max": float(d.max()),
            "error": float((msd["error"][i] * weights).mean(-1).median()),
            "broken": float(d.median()) > tolerance,
            # (N, C) per state and channel: re-weighted by a model's rms, its floor in that
            # model's SMSE units (`symaudit.report.data_check.floor_rows`)
            "defect_msd": msd["defect"][i].tolist(),
        }
    return msd, rows


def _is_ours(meta: dict) -> bool:
    return (meta.get("solver") or {}).get("name") == "symaudit.physics.euler.evolve"


def check_files(
    paths: Sequence[str | os.PathLike],
    *,
    groups: Sequence[str] = ("d4", "shift-x:8", "shift-y:8"),
    boosts: Sequence[str] = (),
    trajectories: int = 8,
    step: int = 0,
    paired: str = "auto",
    resolution: int | None = None,
    alpha: float = 1e-3,
    tolerance: float = DEFAULT_TOLERANCE,
    log=None,
) -> dict:
    """Check each file; returns {"files": [{...per file...}], "settings": {...}}.

    Args:
        groups: group specs for both checks (`symaudit.groups.from_spec`).
        boosts: boost specs ("boost:CX,CY") for the paired check only.
        trajectories: the first n trajectories of each file are used (n >= 3).
        step: snapshot index of the paired transitions (x_step, x_step+1).
        paired: "auto" (our files only), "yes" (error if impossible) or "no".
        resolution: block-average to N x N first (files of other formats; the paired check
            needs the stored grid and is refused with it).
    """
    if paired not in ("auto", "yes", "no"):
        raise ValueError(f"paired must be auto, yes or no, got {paired!r}")
    say = log or (lambda _m: None)
    files = []
    for path in map(Path, paths):
        data = _read(path, trajectories, resolution)
        entry = _describe(path, data)
        entry["statistical"] = _statistical(path.name, data, groups, alpha, say)
        meta, rms, ours = _generator(path, data)
        if _wants_paired(path, paired, ours, resolution):
            specs = [*groups, *boosts]
            entry["paired"] = _paired(data, meta, rms, specs, step, tolerance, say, path.name)
        files.append(entry)
    return {
        "files": files,
        "settings": {
            "groups": list(groups),
            "boosts": list(boosts),
            "trajectories": trajectories,
            "step": step,
            "alpha": alpha,
            "tolerance": tolerance,
            "statistic": "paired t-statistic of feature differences phi(g x) - phi(x) over "
            "trajectories, Bonferroni over elements x snapshots x features",
        },
    }


def _read(path: Path, trajectories: int, resolution: int | None):
    """The first ``trajectories`` trajectories of ``path`` (fields `(n, T, C, H, W)`, times,
    layout, family, source), block-averaged to ``resolution`` if given."""
    from symaudit.data.sources import read_trajectories

    try:
        return read_trajectories(path, trajectories=range(trajectories), resolution=resolution)
    except IndexError as exc:
        raise ValueError(f"{path}: {exc}; pass a smaller --trajectories") from None


def _describe(path: Path, data) -> dict:
    """The file's entry before any check: format, family and the shape read."""
    n, t = data.fields.shape[:2]
    return {
        "file": str(path),
        "format": data.source["format"],
        "family": data.family,
        "trajectories": n,
        "snapshots": t,
        "resolution": list(data.fields.shape[-2:]),
    }


def _statistical(name: str, data, groups: Sequence[str], alpha: float, say) -> dict:
    """Per group spec `distribution_asymmetry` of the snapshots: threshold, flagged elements
    and per-element rows; empty with fewer than 3 trajectories."""
    fields, times = data.fields, data.times
    n, t = fields.shape[:2]
    hw = tuple(fields.shape[-2:])
    say(f"{name}: statistical check over {n} trajectories x {t} snapshots")
    # the specs are parsed (and refused if invalid) even when the check is skipped
    stat_groups = [(s, from_spec(s, data.layout, resolution=hw)) for s in groups]
    if n < 3:  # no standard error from fewer samples: say so instead of guessing
        say(f"{name}: {n} trajectories, too few for the statistical check (>= 3)")
        return {}
    out = {}
    for spec, g in stat_groups:
        res = distribution_asymmetry(fields, g, times=times, alpha=alpha)
        out[spec] = {"threshold": res.threshold, "flagged": res.flagged(), "rows": res.summary()}
    return out


def _generator(path: Path, data) -> tuple[dict, torch.Tensor, bool]:
    """(metadata, channel RMS `(C,)`, written by our solver?): a symaudit file's stored
    metadata and RMS; for other formats no metadata and the RMS of the snapshots read."""
    from symaudit.data.stats import channel_rms
    from symaudit.data.store import open_dataset

    if data.source["format"] != "symaudit":
        return {}, channel_rms(data.fields, data.layout), False
    with open_dataset(path) as ds:
        meta, rms = ds.metadata, ds.channel_rms
    return meta, rms, _is_ours(meta)


def _wants_paired(path: Path, paired: str, ours: bool, resolution: int | None) -> bool:
    """Whether to run the paired check ("auto": on our files); `ValueError` if it is asked
    for ("yes") but impossible."""
    want = paired == "yes" or (paired == "auto" and ours)
    if want and (not ours or resolution is not None):
        raise ValueError(
            f"{path}: the paired check re-runs our solver, so it needs a file written by "
            "symaudit generate, read at its own resolution"
        )
    return want


def _paired(data, meta, rms, specs, step, tolerance, say, name) -> dict:
    """The paired check of ``data`` (our solver's file: ``meta``, ``rms``) on transitions
    (x_step, x_step+1): dt, time, supersampling and per spec `paired_check`'s rows."""
    fields, times, layout = data.fields, data.times, data.layout
    hw = tuple(fields.shape[-2:])
    t = fields.shape[1]
    if not 0 <= step < t - 1:
        raise ValueError(f"step must be in 0..{t - 2}, got {step}")
    dt = float(times[step + 1] - times[step])
    solver = meta.get("solver", {})
    gen = SolverStep(dt, gamma=float(meta.get("gamma", 1.4)), cfl=float(solver.get("cfl", 0.4)))
    batch = (fields[:, step].double(), fields[:, step + 1].double())
    loss = SMSE(rms)
    out = {
        "dt": dt,
        "time": float(times[step]),
        "supersample": solver.get("supersample", 1),
        "groups": {},
    }
    for spec in specs:
        g = from_spec(spec, layout, resolution=hw, dt=dt)
        say(f"{name}: paired solver check, {spec} ({len(g)} elements)")
        _, rows = paired_check(gen, batch, g, loss, tolerance=tolerance)
        out["groups"][spec] = rows
    # the identity's E: the solver restarted from the stored x_t against the stored x_t+1
    # (nonzero with supersampled files: the fine-grid state is not stored)
    idents = [rows["e"]["error"] for rows in out["groups"].values() if "e" in rows]
    out["reproduction_error"] = idents[0] if idents else None
    return out
