"""`symaudit audit`: equivariance errors and influence of a trained run, or of any PyTorch
model given as a factory (``--model file.py:make``), on test data files (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from symaudit.cli._app import app
from symaudit.diagnostics.settings import AuditSettings

#: the option defaults are the settings' own
_DEFAULTS = AuditSettings(groups=["d4"])


@app.command()
def audit(
    out: Annotated[Path, typer.Option(help="Audit directory to write (resumable).")],
    group: Annotated[
        list[str],
        typer.Option(help="Group spec, repeatable: d4, c4, shift-x[:STRIDE], shift-y[:STRIDE]."),
    ],
    run: Annotated[
        Path | None, typer.Option(help="Training run directory (holds checkpoint.pt).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="A model trained elsewhere: FILE.py:FACTORY or package.module:FACTORY (a "
            "function with no arguments returning the nn.Module). Needs --test-data."
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="With --model: a state dict or a checkpoint holding one."),
    ] = None,
    trust_weights: Annotated[
        bool,
        typer.Option(
            "--trust-weights",
            help="With --weights: unpickle the file in full (arbitrary code: trusted files only).",
        ),
    ] = False,
    layout: Annotated[
        str,
        typer.Option(
            help="With --model: the model's channels in order, X:Y marking a vector's components."
        ),
    ] = "rho,m_x:m_y,E",
    resolution: Annotated[
        int | None,
        typer.Option(help="With --model: block-average the test data to N x N first."),
    ] = None,
    snapshots: Annotated[
        str | None,
        typer.Option(help="With --model: snapshots to read, 'all', N or 'start:stop[:step]'."),
    ] = None,
    orientation: Annotated[
        str,
        typer.Option(
            help="With --model, PDEGym/The Well files: grid axes 'xy' (as the file's dims "
            "say), 'yx', or 'auto' (decided from the continuity equation)."
        ),
    ] = "auto",
    damping: Annotated[
        str | None,
        typer.Option(
            help="Absolute lambda, or auto[:FRACTION] = FRACTION x top eigenvalue of the "
            "metric eta (default auto = 1e-3)."
        ),
    ] = None,
    damping_sweep: Annotated[
        bool,
        typer.Option(
            "--damping-sweep", help="Also compute lambda = 1e-4, 1e-3, 1e-2, 1e-1 x top eigenvalue."
        ),
    ] = False,
    rtol: Annotated[
        float | None,
        typer.Option(help="CG relative residual (default: 5e-3 UNet/G-CNN, 5e-2 ViT)."),
    ] = None,
    test_batches: Annotated[int, typer.Option(help="Test mini-batches K per IC family.")] = 1,
    per_family: Annotated[
        int, typer.Option(help="Trajectories N per mini-batch (all of one IC family).")
    ] = _DEFAULTS.per_family,
    test_data: Annotated[
        list[Path] | None,
        typer.Option(help="Test dataset files/dirs (default: the run's held-out trajectories)."),
    ] = None,
    metric_batch: Annotated[
        str, typer.Option(help="'test' (the test batch) or 'train:N' (N training transitions).")
    ] = "test",
    max_iter: Annotated[
        int, typer.Option(help="CG iteration limit per solve.")
    ] = _DEFAULTS.max_iter,
    rank: Annotated[
        str,
        typer.Option(
            help="Rank of the Nystrom CG preconditioner, or 'auto' (grown while it pays)."
        ),
    ] = "auto",
    no_cosine: Annotated[
        bool, typer.Option("--no-cosine", help="Skip the cosine normalisation's extra solves.")
    ] = False,
    device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")] = "cpu",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Discard an audit made with other settings.")
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            help="Processes sharing the work (torchrun underneath): the metric batch is split "
            "over them, each holds 1/NPROC of it (with --run)."
        ),
    ] = 1,
    checkpoints: Annotated[
        str | None,
        typer.Option(
            help="With --run: audit the run's kept checkpoints (train --keep) and its final "
            "one, each into OUT/step-<S>: all, every:K (every K-th) or steps 0,4,16."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Audit RUN (or any PyTorch model: --model FILE.py:FACTORY --test-data FILE) for every
    --group: E_g, D_g and influence M^g per test mini-batch.

    D4 is evaluated at the first step of the rollout, translations at the last step inside
    the training window (the paper's protocol; see docs/reproduce.md). Rerunning after an
    interruption redoes only the missing pieces.
    """
    from symaudit.cli._dist import process_group, relaunch, under_torchrun
    from symaudit.diagnostics.audit import AuditError, run_audit
    from symaudit.diagnostics.settings import DAMPING_SWEEP
    from symaudit.groups import GroupError

    if (run is None) == (model is None):
        typer.secho("error: pass exactly one of --run and --model", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    if nproc < 1 or (nproc > 1 and model is not None):
        typer.secho(
            "error: --nproc must be >= 1 (and 1 with --model)", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(code=2)
    try:  # every setting checked before anything is read, computed or written
        settings = AuditSettings(
            groups=group,
            damping=damping,
            damping_sweep=DAMPING_SWEEP if damping_sweep else (),
            rtol=rtol,
            test_batches=test_batches,
            per_family=per_family,
            test_data=[str(p) for p in test_data] if test_data else None,
            metric_batch=metric_batch,
            max_iter=max_iter,
            rank=_parse_rank(rank),
            cosine=not no_cosine,
        )
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    if nproc > 1 and not under_torchrun():
        relaunch(nproc)
    run_options = dict(device=device, overwrite=overwrite, progress=not quiet)
    run_options["log"] = None if quiet else typer.echo
    if model is not None:
        foreign = dict(resolution=resolution, snapshots=snapshots, orientation=orientation)
        _audit_foreign(
            model, (weights, trust_weights), layout, settings, out, **foreign, **run_options
        )
        return
    do_audit = run_audit
    if checkpoints is not None:  # the same audit of every kept checkpoint
        from functools import partial

        from symaudit.diagnostics.over_training import audit_checkpoints

        do_audit = partial(audit_checkpoints, checkpoints=checkpoints)
    try:
        with process_group(device) as joined:
            device, pg, rank_ = joined
            path = do_audit(
                run, settings, out=out, **{**run_options, "device": device}, process_group=pg
            )
    except (AuditError, GroupError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    if rank_ == 0:
        typer.echo(f"audit written to {path}")


def _parse_rank(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter(f"--rank must be a positive integer or 'auto', got {value!r}")
    return int(value)


def _audit_foreign(spec, weights, layout, settings, out, **kwargs) -> None:
    """`symaudit audit --model ...`: load the factory and weights, audit on --test-data."""
    from symaudit.data.transitions import parse_snapshots
    from symaudit.diagnostics.audit import AuditError
    from symaudit.diagnostics.foreign import audit_foreign
    from symaudit.fields import LayoutError
    from symaudit.groups import GroupError
    from symaudit.models.foreign import ForeignModelError, load_factory, load_weights, parse_layout

    try:
        if not settings.test_data:
            raise ForeignModelError("--model needs --test-data FILE (ours, PDEGym .nc, The Well)")
        fields = parse_layout(layout)
        net = load_factory(spec)
        weights, trust = weights
        if weights is not None:
            load_weights(net, weights, trust=trust)
        kwargs["snapshots"] = parse_snapshots(kwargs["snapshots"])
        path = audit_foreign(
            net,
            fields,
            list(settings.test_data),
            settings,
            out=out,
            name=spec.rpartition(":")[2],
            weights=None if weights is None else str(weights),
            **kwargs,
        )
    except (AuditError, GroupError, ForeignModelError, LayoutError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"audit written to {path}")
