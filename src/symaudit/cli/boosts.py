"""`symaudit boosts`: E, D and influence of trained runs against Galilean boost speed, with the
solver's own frame dependence as the floor (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from symaudit.cli._app import app


@app.command()
def boosts(
    run: Annotated[list[Path], typer.Option(help="Training run directory, repeatable.")],
    out: Annotated[Path, typer.Option(help="Study directory (boosts.json, figure, index.html).")],
    test_data: Annotated[
        list[Path] | None, typer.Option(help="Test files (default: the runs' held-out data).")
    ] = None,
    family: Annotated[
        list[str] | None, typer.Option(help="Only these initial-condition families.")
    ] = None,
    per_family: Annotated[int, typer.Option(help="Test trajectories per family.")] = 4,
    steps: Annotated[
        int | None,
        typer.Option(help="Emulator steps per boost (default: the whole window; 1 = one step)."),
    ] = None,
    multiples: Annotated[
        str, typer.Option(help="Speeds k * c_min, c_min = 1/(steps dt N): comma-separated k.")
    ] = "0,1,2,4,8,16,32",
    direction: Annotated[str, typer.Option(help="Boost direction: x, y or xy.")] = "x",
    influence: Annotated[bool, typer.Option(help="Compute the self-influence ratio.")] = True,
    cosine: Annotated[bool, typer.Option(help="Also the cosine normalisation.")] = False,
    damping: Annotated[str, typer.Option(help="lambda, auto or auto:FRACTION.")] = "auto",
    rtol: Annotated[float | None, typer.Option(help="CG tolerance (default per model).")] = None,
    rank: Annotated[int, typer.Option(help="Nystrom rank.")] = 32,
    floor: Annotated[bool, typer.Option(help="Measure the solver's own defect.")] = True,
    device: Annotated[str, typer.Option(help="Device of the models.")] = "cpu",
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """How does a model respond to Galilean boosts of increasing speed, and from which speed
    on is the response linear? Writes boosts.json, boosts.png and index.html."""
    import torch

    from symaudit.diagnostics.boost_study import run_boost_study
    from symaudit.report.boosts import build_boost_page

    try:
        ks = [int(k) for k in multiples.split(",")]
    except ValueError:
        raise typer.BadParameter(f"multiples {multiples!r}: comma-separated integers") from None
    damp: float | str = damping if damping.startswith("auto") else float(damping)
    torch.set_flush_denormal(True)
    study = run_boost_study(
        run,
        out=out,
        test_data=test_data,
        families=family,
        per_family=per_family,
        steps=steps,
        multiples=ks,
        direction=direction,
        influence=influence,
        cosine=cosine,
        damping=damp,
        rtol=rtol,
        rank=rank,
        floor=floor,
        device=device,
        progress=progress,
        log=typer.echo,
    )
    typer.echo(f"wrote {build_boost_page(study)}")
