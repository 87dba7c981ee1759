"""Audit of a model trained elsewhere (``symaudit audit --model ...``): any `nn.Module`, test
data from our HDF5 format, a PDEGym ``.nc`` file or a The Well HDF5 file.

Writes an audit directory in the same format as `run_audit` (so ``symaudit report`` reads
it): ``audit.json``, ``test_errors.json`` and, per group spec and test mini-batch,
``<group>/batch<k>/{equivariance,influence,sweep-<j>}.pt``; a rerun with the same settings
skips the pieces on disk. Each data file is one family; mini-batch k holds trajectories
``k*per_family ... (k+1)*per_family - 1`` of every file. Groups that move the grid
(translations, boosts) are audited on the last pair of selected snapshots and refused on data
that are not periodic along the axes they move; the others on the first pair.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from symaudit._io import atomic_write_json
from symaudit.diagnostics.audit import (
    AuditError,
    _audit_batches,
    _Job,
    _meta,
    _settings,
    _Solve,
    _test_errors,
    _TestSet,
)
from symaudit.diagnostics.settings import AuditSettings
from symaudit.fields import FieldLayout
from symaudit.training.loss import SMSE

__all__ = ["audit_foreign", "model_channel_rms"]


def model_channel_rms(model: nn.Module) -> torch.Tensor | None:
    """The channel RMS a model carries (attribute or buffer ``channel_rms``), if any."""
    rms = getattr(model, "channel_rms", None)
    return None if rms is None else torch.as_tensor(rms, dtype=torch.float64).detach().cpu()


def _load_test_set(
    paths: Sequence[str | os.PathLike],
    layout: FieldLayout,
    count: int,
    snapshots,
    resolution: int | None,
    orientation: str,
) -> tuple[_TestSet, dict[str, dict[str, bool]]]:
    from symaudit.data.sources import read_trajectories, to_layout
    from symaudit.data.store import DatasetError

    families: dict[str, torch.Tensor] = {}
    sources: dict[str, dict] = {}
    periodic: dict[str, dict[str, bool]] = {}
    times = None
    for p in paths:
        try:
            data = read_trajectories(
                p,
                trajectories=list(range(count)),
                snapshots=snapshots,
                resolution=resolution,
                orientation=orientation,
            )
        except (DatasetError, IndexError) as exc:
            raise AuditError(f"cannot read test data {p}: {exc}") from exc
        fam = data.family if data.family not in families else f"{data.family}:{Path(p).stem}"
        families[fam] = to_layout(data, layout)
        sources[fam] = data.source
        periodic[str(p)] = data.periodic
        if times is not None and not torch.allclose(times, data.times.to(times.dtype)):
            raise AuditError(f"{p}: its snapshot times differ from the other files'")
        times = data.times if times is None else times
    if times is None or times.numel() < 2:
        raise AuditError("the test data need at least 2 snapshots")
    return _TestSet(families, sources, times), periodic


def _check_boundaries(spec: str, group, periodic: dict[str, dict[str, bool]]) -> None:
    from symaudit.groups import translation_axes

    axes = translation_axes(group.spec)
    for path, per in periodic.items():
        bad = sorted(a for a in axes if not per.get(a, False))
        if bad:
            raise AuditError(
                f"group {spec!r} moves the grid along {', '.join(bad)}, but {path} is not "
                f"periodic along {', '.join(bad)} (its boundary conditions: {per}): shifts and "
                "boosts are not symmetries there; audit d4 or c4 instead"
            )


def audit_foreign(
    model: nn.Module,
    layout: FieldLayout,
    data: Sequence[str | os.PathLike],
    groups: Sequence[str] | AuditSettings,
    *,
    out: str | os.PathLike,
    name: str,
    weights: str | None = None,
    channel_rms: torch.Tensor | None = None,
    snapshots=None,
    resolution: int | None = None,
    orientation: str = "auto",
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **options,
) -> Path:
    """Audit ``model`` (channels in ``layout``) on the test files ``data`` for every group
    spec (module docstring). ``groups``: an `AuditSettings`, or group specs with the other
    settings as ``options`` (fields of `AuditSettings`; rtol defaults to 5e-3, the metric
    batch is the test batch). ``channel_rms``: the SMSE scales `(C,)`; default the model's
    own ``channel_rms``, else the RMS of the loaded test trajectories (vectors sharing one
    scale). ``name`` and ``weights`` identify the model in audit.json. Returns the audit
    directory."""
    from symaudit.diagnostics._params import model_checksum
    from symaudit.groups import from_spec

    settings = _settings(groups, options).with_rtol("foreign")
    if settings.metric_batch != "test":
        raise AuditError("a model trained elsewhere is audited with the test batch as metric")
    say = log or (lambda _m: None)
    out = Path(out)
    if not data:
        raise AuditError("no test data: pass --test-data FILE")
    model = model.to(device).eval()
    count = settings.test_batches * settings.per_family
    test, periodic = _load_test_set(data, layout, count, snapshots, resolution, orientation)
    channel_rms, rms_source = _channel_rms(model, channel_rms, test, layout)
    res = tuple(next(iter(test.families.values())).shape[-2:])
    dt = float(test.times[1] - test.times[0])
    jobs = {}
    for spec in settings.groups:
        group = from_spec(spec, layout, resolution=res, dt=dt)
        _check_boundaries(spec, group, periodic)
        step = test.times.numel() - 2 if _moves(group) else 0
        jobs[spec] = _Job(spec, group, group, step)
    checksum = model_checksum(model)
    record = {
        **settings.record(test.sources),
        "layout": layout.to_dict(),
        "channel_rms": [float(v) for v in channel_rms],
        "channel_rms_source": rms_source,
    }
    run = {"dir": None, "weights": weights, "seed": 0, "model_checksum": checksum}
    num = sum(p.numel() for p in model.parameters())
    described = {"preset": name, "architecture": "foreign", "num_parameters": num}
    meta = _meta(run, described, record, checksum, device, test)
    _start(out, meta, overwrite)
    loss = SMSE(torch.as_tensor(channel_rms, dtype=torch.float64)).to(device)
    if not (out / "test_errors.json").exists():
        say("test errors vs persistence")
        atomic_write_json(out / "test_errors.json", _test_errors(model, loss, test))
    # the per-mini-batch work is run_audit's own: one family per batch, translation groups
    # sharing one influence computation
    solve = _Solve(settings.influence(), progress=progress)
    meta["pieces"] = _audit_batches(model, loss, test, jobs, settings, None, out, say, solve)
    meta["complete"] = True
    atomic_write_json(out / "audit.json", meta)
    return out


def _channel_rms(model, given, test: _TestSet, layout: FieldLayout) -> tuple[torch.Tensor, str]:
    """The SMSE scales and where they come from: given, the model's own, or the test data's."""
    from symaudit.data.stats import channel_rms as data_rms

    if given is not None:
        return given, "model"
    own = model_channel_rms(model)
    if own is not None:
        return own, "model"
    return data_rms(torch.cat(list(test.families.values()), 1), layout), "test data"


def _moves(group) -> bool:
    from symaudit.groups import translation_axes

    return bool(translation_axes(group.spec))


def _start(out: Path, meta: dict, overwrite: bool) -> None:
    """Write audit.json, refusing (or with ``overwrite`` clearing) an audit with other
    settings in ``out``."""
    path = out / "audit.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if old.get("settings_digest") != meta["settings_digest"]:
            if not overwrite:
                raise AuditError(
                    f"{out} holds an audit with other settings or another model; use another "
                    "--out or --overwrite"
                )
            for p in [*sorted(out.rglob("*.pt")), out / "test_errors.json"]:
                p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, meta)
