"""`run_boost_study`: the boost response of trained runs, next to the data generator's floor.

For every run and initial-condition family, the first ``per_family`` test trajectories give
(x_0, x_m); `boost_response` evaluates E, D and the influence ratio on boosts k * c_min,
c_min = 1 / (m dt N). The solver (`SolverStep`, m intervals dt) on the same x_0 gives the
data's own defect D^data(c): the floor. Pieces are saved atomically as
``OUT/pieces/<run>-<family>.pt`` and ``OUT/pieces/floor-<family>.pt`` with a digest of their
settings; a rerun skips the pieces whose digest matches (a killed study resumes), and
``OUT/boosts.json`` holds the curves, the fitted exponents (`linear_regime`) and settings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from symaudit._io import atomic_torch_save, atomic_write_json, check_output_dir
from symaudit.diagnostics.audit import AuditError, _load_test_set, default_rtol, settings_digest
from symaudit.diagnostics.boosts import (
    BoostResponse,
    Rollout,
    boost_group,
    boost_response,
    kick_defects,
    linear_regime,
)

__all__ = ["BOOST_MULTIPLES", "QUANTITIES", "run_boost_study"]

#: default boost multiples k (speeds k * c_min): a geometric ladder from the smallest boost
BOOST_MULTIPLES = (0, 1, 2, 4, 8, 16, 32)
#: curves whose small-speed exponent is fitted, with the exponent linear response predicts
QUANTITIES = {
    "defect": "1 (shocks) to 2 (smooth)",
    "kick_defect": "1 (shocks) to 2 (smooth)",
    "influence_change": "1",
    "cosine_deficit": "2",
}


def _load_piece(path: Path, digest: str) -> BoostResponse | None:
    if not path.is_file():
        return None
    try:
        d = torch.load(path, weights_only=True)
        if d.get("digest") != digest:
            return None
        return BoostResponse.from_payload(d["response"])
    except Exception:  # a corrupt or foreign piece is recomputed
        return None


def _save_piece(path: Path, digest: str, res: BoostResponse) -> None:
    atomic_torch_save({"digest": digest, "response": res.to_payload()}, path)


def _add_kick(res: BoostResponse, f, loss, x0, group, path: Path, digest: str) -> None:
    """Pieces written before D_kick existed get it added (forward passes only) and re-saved;
    the group is in ascending speed order like the piece (`boost_group` sorts multiples)."""
    if res.kick_defect is None:
        res.kick_defect = kick_defects(f, loss, x0, group, res.settings["eq"])
        _save_piece(path, digest, res)


def _regimes(curves: dict) -> dict:
    return {k: linear_regime(curves["speeds"], curves[k]) for k in QUANTITIES if k in curves}


def run_boost_study(
    runs: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    test_data: Sequence[str | os.PathLike] | None = None,
    families: Sequence[str] | None = None,
    per_family: int = 4,
    steps: int | None = None,
    multiples: Sequence[int] = BOOST_MULTIPLES,
    direction: str = "x",
    influence: bool = True,
    cosine: bool = False,
    damping: float | str = "auto",
    rtol: float | None = None,
    rank: int | str = 32,
    floor: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Boost response of each run in ``runs`` (and the solver floor) → ``OUT/boosts.json``.

    Args:
        runs: training run directories (each holds ``checkpoint.pt``).
        test_data: test files (one family each); default: each run's held-out trajectories.
        families: restrict to these families (default: all in the test data).
        per_family: N, trajectories per family (all from the start of the window).
        steps: m, emulator steps per boost (default: the whole window, T - 1 steps, which
            gives the smallest speeds); m = 1 is the one-step audit.
        multiples, direction: speeds k * c_min along "x", "y" or "xy" (`boost_group`).
        influence, cosine, damping, rtol, rank: influence settings (rtol default: the
            paper's per architecture).
        floor: also measure the solver's own defect (needs our solver's data: the floor is
            only meaningful when the test data came from `symaudit generate`).
        device: where the models run (the solver floor runs on the CPU in float64).
    """
    say = log or (lambda _m: None)
    out = check_output_dir(out)
    if not runs:
        raise AuditError("no runs given: pass --run RUN_DIR")
    if per_family < 1:
        raise AuditError(f"per_family must be positive, got {per_family}")
    options = {
        "multiples": multiples,
        "direction": direction,
        "per_family": per_family,
        "influence": influence,
        "cosine": cosine,
        "damping": damping,
        "rank": rank,
    }
    summary: dict = {"models": [], "floor": {}, "settings": {}}
    for path in map(Path, runs):
        run = _load_run(path, test_data, families, steps, device)
        boosts = _run_boosts(run, options, rtol)
        summary["settings"] = boosts.settings
        floors = summary["floor"] if floor else None
        summary["models"].append(_study_run(out, run, boosts, floors, device, progress, say))
    summary["quantities"] = QUANTITIES
    atomic_write_json(out / "boosts.json", summary)
    return out


@dataclass
class _Run:
    """One run, loaded and checked against the study's window: the checkpoint as read (its
    digest keys the pieces), the model, its metadata and `SMSE`, the test set, m emulator
    steps of dt on N x N grids, and the families studied."""

    path: Path
    raw: dict
    model: torch.nn.Module
    info: Any
    loss: torch.nn.Module
    test: Any
    steps: int
    dt: float
    resolution: int
    families: list[str]


@dataclass
class _Boosts:
    """What every piece of one run is computed with: the boosts (ascending speed), the
    influence rtol and the settings recorded in ``boosts.json`` and digested into each
    piece's key."""

    group: Any
    rtol: float
    settings: dict


def _load_run(
    run: Path,
    test_data: Sequence[str | os.PathLike] | None,
    families: Sequence[str] | None,
    steps: int | None,
    device: str | torch.device,
) -> _Run:
    """Load ``run``'s checkpoint and test set; check m and the families against its window."""
    from symaudit.training import SMSE, load_checkpoint
    from symaudit.training.checkpoint import CheckpointError, read_checkpoint

    try:
        raw = read_checkpoint(run / "checkpoint.pt")
        model, info = load_checkpoint(run / "checkpoint.pt", map_location=device)
    except CheckpointError as exc:
        raise AuditError(f"cannot load {run}: {exc}") from exc
    test = _load_test_set(raw, test_data)
    n_times = test.times.numel()
    m = n_times - 1 if steps is None else int(steps)
    if not 1 <= m <= n_times - 1:
        raise AuditError(f"steps must be in 1..{n_times - 1} for this window, got {m}")
    dt = float(test.times[1] - test.times[0])
    fams = list(test.families) if families is None else list(families)
    unknown = [f for f in fams if f not in test.families]
    if unknown:
        raise AuditError(f"families {unknown} not in the test data ({list(test.families)})")
    res_n = int(next(iter(test.families.values())).shape[-1])
    loss = SMSE(info.channel_rms).to(device)
    return _Run(run, raw, model, info, loss, test, m, dt, res_n, fams)


def _run_boosts(run: _Run, options: dict, rtol: float | None) -> _Boosts:
    """The boosts, rtol and recorded settings of ``run``; ``options``: the study's
    multiples, direction, per_family, influence, cosine, damping and rank."""
    group = boost_group(
        run.info.layout,
        run.resolution,
        run.dt,
        steps=run.steps,
        multiples=options["multiples"],
        direction=options["direction"],
    )
    arch = run.info.model_config["architecture"]
    tol = default_rtol(arch) if rtol is None else float(rtol)
    settings = {
        "steps": run.steps,
        "dt": run.dt,
        "resolution": run.resolution,
        "multiples": sorted(int(k) for k in options["multiples"]),
        "direction": options["direction"],
        "per_family": options["per_family"],
        "influence": options["influence"],
        "cosine": options["cosine"],
        "damping": options["damping"],
        "rank": options["rank"],
        "test_data": run.test.sources,
    }
    return _Boosts(group, tol, settings)


def _study_run(
    out: Path,
    run: _Run,
    boosts: _Boosts,
    floors: dict | None,
    device: str | torch.device,
    progress: bool,
    say: Callable[[str], None],
) -> dict:
    """``run``'s entry in ``boosts.json``: per family its response (`_model_family`). Adds
    to ``floors`` (None: no floor) the solver floor of each family not in it yet."""
    entry = {
        "run": str(run.path),
        "preset": run.info.model_config.get("preset", run.path.name),
        "architecture": run.info.model_config["architecture"],
        "rtol": boosts.rtol,
        "families": {},
    }
    for fam in run.families:
        batch = _transitions(run, fam, boosts.settings["per_family"])
        entry["families"][fam] = _model_family(out, run, boosts, fam, batch, device, progress, say)
        # the floor depends on the data only: measured once per family, on the batch of the
        # first run that studies it (interleaved so a killed study keeps the floors it made)
        if floors is not None and fam not in floors:
            floors[fam] = _floor(
                out,
                fam,
                batch,
                boosts.group,
                run.steps,
                run.dt,
                run.info.channel_rms,
                boosts.settings,
                say,
            )
    return entry


def _transitions(run: _Run, fam: str, per_family: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_0, x_m) `(N, C, H, W)` x 2: the first ``per_family`` test trajectories of ``fam``."""
    traj = run.test.families[fam][:per_family]
    if traj.shape[0] < per_family:
        raise AuditError(f"family {fam!r} has only {traj.shape[0]} test trajectories")
    return traj[:, 0].contiguous(), traj[:, run.steps].contiguous()


def _model_family(
    out: Path,
    run: _Run,
    boosts: _Boosts,
    fam: str,
    batch: tuple[torch.Tensor, torch.Tensor],
    device: str | torch.device,
    progress: bool,
    say: Callable[[str], None],
) -> dict:
    """The run's boost response on ``fam`` (its saved piece if the digest matches, else
    computed and saved) → its curves, fitted regimes, seconds and influence settings."""
    s, m, name = boosts.settings, run.steps, run.path.name
    digest = settings_digest([s, boosts.rtol, run.raw.get("digest", ""), str(run.path), fam])
    path = out / "pieces" / f"{name}-{fam}.pt"
    res = _load_piece(path, digest)
    if res is None:
        say(f"{name} {fam}: {len(boosts.group)} boosts over {m} steps, N = {s['per_family']}")
        t0 = time.perf_counter()
        res = boost_response(
            run.model,
            run.loss,
            batch,
            boosts.group,
            steps=m,
            influence=s["influence"],
            cosine=s["cosine"],
            damping=s["damping"],
            rtol=boosts.rtol,
            rank=s["rank"],
            device=device,
            progress=progress,
        )
        res.settings["seconds"] = time.perf_counter() - t0
        _save_piece(path, digest, res)
        say(f"{name} {fam}: done in {res.settings['seconds']:.1f} s")
    f = run.model if m == 1 else Rollout(run.model, m)
    _add_kick(res, f, run.loss, batch[0], boosts.group, path, digest)
    curves = res.curves()
    return {
        "curves": curves,
        "regimes": _regimes(curves),
        "seconds": res.settings.get("seconds"),
        "influence": res.settings.get("influence"),
    }


def _floor(out: Path, fam: str, batch, group, m: int, dt: float, rms, settings, say) -> dict:
    """The solver's own D(c) and its reproduction error SMSE(S(x_0), x_m) on the same x_0."""
    from symaudit.data.symmetry_check import SolverStep
    from symaudit.training import SMSE

    digest = settings_digest([settings, rms.tolist(), fam, "floor"])
    path = out / "pieces" / f"floor-{fam}.pt"
    res = _load_piece(path, digest)
    if res is None:
        say(f"floor {fam}: solver on {len(group)} boosted states over {m} steps")
        t0 = time.perf_counter()
        x0, xm = (t.double() for t in batch)
        res = boost_response(
            SolverStep(dt, steps=m),
            SMSE(rms),
            (x0, xm),
            group,
            steps=1,
            influence=False,
            dtype=torch.float64,
        )
        res.settings["seconds"] = time.perf_counter() - t0
        _save_piece(path, digest, res)
    x0 = batch[0].double()
    _add_kick(res, SolverStep(dt, steps=m), SMSE(rms), x0, group, path, digest)
    curves = res.curves()
    return {
        "curves": curves,
        "regimes": _regimes(curves),
        # E at c = 0: the solver restarted from the stored x_0 against the stored x_m
        "reproduction_error": curves["error"][0],
        "seconds": res.settings.get("seconds"),
    }
