"""Audit time of every zoo model (issue 11): equivariance errors and influence under D4 and
translations, float32, default solver settings (auto damping, rtol 5e-3, Nyström auto rank).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_zoo.py [--resolution 32] [--n 4]

Models (random weights -- the cost of an audit depends on the architecture and sizes, the
iteration counts on the spectrum, which training changes): neuraloperator's FNO without and
with its grid embedding (width 16, 4 layers, 8 x 8 modes), the tests' BatchNorm UNet, and our
presets unet-small, vit-small (built for the grid), gcnn-small. Test states: smooth random
positive-density fields. Writes benchmarks/results/zoo.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from symaudit import SMSE, FieldLayout, models
from symaudit.diagnostics import equivariance_error, influence
from symaudit.groups import from_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _zoo_models import BNUNet  # noqa: E402


def _fno(pe):
    from neuralop.models import FNO

    return FNO(
        n_modes=(8, 8),
        in_channels=4,
        out_channels=4,
        hidden_channels=16,
        n_layers=4,
        positional_embedding=pe,
    )


def _states(n: int, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(
        torch.randn(n, 4, res + 4, res + 4, generator=g).repeat(1, 1, 1, 1), 5, 1
    )[..., :res, :res]
    x[:, 0] = x[:, 0].abs() + 1.0
    x[:, 3] = x[:, 3].abs() + 2.0
    return x, x + 0.05 * torch.randn(x.shape, generator=g)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    res = args.resolution
    zoo = {
        "fno (neuraloperator, no embedding)": lambda: _fno(None),
        "fno (neuraloperator, grid embedding)": lambda: _fno("grid"),
        "bn-unet (tests)": lambda: BNUNet(width=16),
        "unet-small": lambda: models.build("unet-small"),
        "vit-small": lambda: models.build("vit-small", resolution=res),
        "gcnn-small": lambda: models.build("gcnn-small"),
    }
    layout = FieldLayout.euler()
    batch = _states(args.n, res)
    loss = SMSE(torch.tensor([1.0, 0.5, 0.5, 2.0]))
    rows = []
    for name, build in zoo.items():
        torch.manual_seed(0)
        model = build()
        for spec in ("d4", "shift-x:4"):
            group = from_spec(spec, layout, resolution=res)
            t0 = time.perf_counter()
            eq = equivariance_error(model, batch, group, loss)
            t1 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inf = influence(model, loss, batch, group)
            t2 = time.perf_counter()
            row = {
                "model": name,
                "group": spec,
                "params": inf.settings["num_params"],
                "batching": inf.settings["batching"]["mode"],
                "equivariance_s": round(t1 - t0, 2),
                "influence_s": round(t2 - t1, 2),
                "max_defect": float(eq.defect[1:].max()),
                "cg_iterations": max(inf.reports["test"]["iterations"]),
                "converged": inf.all_converged,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(__file__).parent / "results" / "zoo.json"
    out.write_text(json.dumps({"resolution": res, "n": args.n, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
