"""`symaudit estimate`: measured cost of a study preset on this device, stage by stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from symaudit.cli._app import app

_A100_TFLOPS = 19.5  # FP32 (non-tensor-core) peak of one A100, NVIDIA's data sheet


def _size(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if b < 1000 or unit == "TB":
            return f"{b:.3g} {unit}"
        b /= 1000
    return ""


def _hours(s: float | None) -> str:
    return "–" if s is None else f"{s / 3600:.3g}"


@app.command()
def estimate(
    preset: Annotated[str, typer.Option(help="Study preset: micro, demo, paper, ...")] = "paper",
    device: Annotated[str, typer.Option(help="Torch device to measure on (cpu, cuda).")] = "cpu",
    flops: Annotated[
        bool, typer.Option("--flops", help="Also count FLOPs (A100 conversion).")
    ] = False,
    utilisation: Annotated[
        float, typer.Option(help="Assumed fraction of the A100 FP32 peak reached (--flops).")
    ] = 0.4,
    out: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
    costs: Annotated[
        Path | None,
        typer.Option(
            help="Reuse the unit costs of an earlier --out file instead of measuring (e.g. "
            "measured on the GPU machine, planned elsewhere)."
        ),
    ] = None,
) -> None:
    """Measure one Euler step, one training step, one chi-product column and one per-sample
    gradient at PRESET's real model sizes and resolution on DEVICE (minutes on a CPU for the
    paper preset), then print device-hours, disk and peak memory per stage with the
    assumptions used. docs/reproduce.md explains the model."""
    from rich.console import Console
    from rich.table import Table

    from symaudit._io import atomic_write_text
    from symaudit.pipeline.estimate import Assumptions, UnitCosts, measure
    from symaudit.pipeline.estimate import estimate as run_estimate
    from symaudit.pipeline.presets import PRESETS

    if preset not in PRESETS:
        typer.secho(f"error: unknown preset {preset!r}; have {sorted(PRESETS)}", err=True)
        raise typer.Exit(code=2)
    if not 0 < utilisation <= 1:
        typer.secho("error: --utilisation must be in (0, 1]", err=True)
        raise typer.Exit(code=2)
    console = Console()
    p = PRESETS[preset]
    if costs is not None:
        try:
            unit = UnitCosts.from_dict(json.loads(costs.read_text())["costs"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{costs} is not a `symaudit estimate --out` file: {exc}") from None
        missing = {mp.preset for mp in p.models} - set(unit.models)
        if missing:
            typer.secho(f"error: {costs} has no costs for {sorted(missing)}", err=True)
            raise typer.Exit(code=2)
        flops = any(m.chi_column_flops for m in unit.models.values())
        device = unit.device
    else:
        with console.status("measuring") as status:
            unit = measure(p, device=device, flops=flops, progress=lambda m: status.update(m))
    a = Assumptions()
    stages = run_estimate(p, unit, a)
    table = Table(title=f"symaudit reproduce --preset {preset}: estimated cost on {device}")
    for col in ("stage", "what", "count", "device-hours", "(pessimistic)", "paper-style CG"):
        table.add_column(col, justify="right" if "hours" in col or "CG" in col else "left")
    table.add_column("disk", justify="right")
    table.add_column("peak RAM", justify="right")
    for s in stages:
        table.add_row(
            s.stage,
            s.detail,
            s.count,
            _hours(s.seconds),
            _hours(s.seconds_high),
            _hours(s.baseline_seconds),
            _size(s.disk_bytes),
            _size(s.peak_ram_bytes),
        )
    total = sum(s.seconds for s in stages)
    table.add_row("total", "", "", _hours(total), "", "", _size(sum(s.disk_bytes for s in stages)))
    console.print(table)
    console.print(
        f"Measured in {unit.seconds:.0f} s with {unit.threads} thread(s), float32 models with "
        f"random weights. Assumptions: {a.iterations:g} block-CG iterations per solve "
        f"({a.iterations_untrained:g} pessimistic, untrained), paper-style plain CG "
        f"{a.baseline_iterations:g} per (state, element), Nyström rank 64 or the next power of "
        "two of the columns (or the preset's fixed rank); training cost linear in the batch."
    )
    for m in unit.models.values():
        line = (
            f"{m.preset}: {m.params:,} parameters; chi-product column {m.chi_column:.3g} s per "
            f"metric-batch state, per-sample gradient {m.gradient:.3g} s, forward "
            f"{m.forward:.3g} s, training {m.train_sample:.3g} s per sample"
        )
        if flops:
            a100 = m.chi_column_flops / (_A100_TFLOPS * 1e12 * utilisation)
            line += (
                f"; {m.chi_column_flops / 1e9:.3g} GFLOP per chi column -> {a100 * 1e3:.3g} ms "
                f"on one A100 at {utilisation:.0%} of {_A100_TFLOPS} TFLOP/s"
            )
        console.print(line)
    if out is not None:
        from dataclasses import asdict

        doc = {
            "preset": preset,
            "costs": unit.to_dict(),
            "assumptions": asdict(a),
            "stages": [asdict(s) for s in stages],
        }
        atomic_write_text(out, json.dumps(doc, indent=2))
        console.print(f"wrote {out}")
