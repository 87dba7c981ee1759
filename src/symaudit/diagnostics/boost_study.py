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
from pathlib import Path

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
    from symaudit.training import SMSE, load_checkpoint
    from symaudit.training.checkpoint import CheckpointError, read_checkpoint

    say = log or (lambda _m: None)
    out = check_output_dir(out)
    if not runs:
        raise AuditError("no runs given: pass --run RUN_DIR")
    if per_family < 1:
        raise AuditError(f"per_family must be positive, got {per_family}")
    summary: dict = {"models": [], "floor": {}, "settings": {}}
    floor_done: set[str] = set()
    for run in map(Path, runs):
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
        group = boost_group(
            info.layout, res_n, dt, steps=m, multiples=multiples, direction=direction
        )
        loss = SMSE(info.channel_rms).to(device)
        arch = info.model_config["architecture"]
        tol = default_rtol(arch) if rtol is None else float(rtol)
        settings = {
            "steps": m,
            "dt": dt,
            "resolution": res_n,
            "multiples": sorted(int(k) for k in multiples),
            "direction": direction,
            "per_family": per_family,
            "influence": influence,
            "cosine": cosine,
            "damping": damping,
            "rank": rank,
            "test_data": test.sources,
        }
        summary["settings"] = settings
        entry = {
            "run": str(run),
            "preset": info.model_config.get("preset", run.name),
            "architecture": arch,
            "rtol": tol,
            "families": {},
        }
        for fam in fams:
            traj = test.families[fam][:per_family]
            if traj.shape[0] < per_family:
                raise AuditError(f"family {fam!r} has only {traj.shape[0]} test trajectories")
            batch = (traj[:, 0].contiguous(), traj[:, m].contiguous())
            digest = settings_digest([settings, tol, raw.get("digest", ""), str(run), fam])
            path = out / "pieces" / f"{run.name}-{fam}.pt"
            res = _load_piece(path, digest)
            if res is None:
                say(f"{run.name} {fam}: {len(group)} boosts over {m} steps, N = {per_family}")
                t0 = time.perf_counter()
                res = boost_response(
                    model,
                    loss,
                    batch,
                    group,
                    steps=m,
                    influence=influence,
                    cosine=cosine,
                    damping=damping,
                    rtol=tol,
                    rank=rank,
                    device=device,
                    progress=progress,
                )
                res.settings["seconds"] = time.perf_counter() - t0
                _save_piece(path, digest, res)
                say(f"{run.name} {fam}: done in {res.settings['seconds']:.1f} s")
            f = model if m == 1 else Rollout(model, m)
            _add_kick(res, f, loss, batch[0], group, path, digest)
            curves = res.curves()
            entry["families"][fam] = {
                "curves": curves,
                "regimes": _regimes(curves),
                "seconds": res.settings.get("seconds"),
                "influence": res.settings.get("influence"),
            }
            if floor and fam not in floor_done:
                floor_done.add(fam)
                summary["floor"][fam] = _floor(
                    out, fam, batch, group, m, dt, info.channel_rms, settings, say
                )
        summary["models"].append(entry)
    summary["quantities"] = QUANTITIES
    atomic_write_json(out / "boosts.json", summary)
    return out


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
