"""Training throughput (samples/second) of each model preset on CPU at 64² and 128².

One training step = forward, SMSE against a target, backward, Adam update — what
`symaudit.training.train` does per batch, without data loading or validation. The ViT presets
are rebuilt for each grid (their position embedding is resolution-specific). Timings on a
shared machine vary with its load; the load average is printed with the table.

    python benchmarks/bench_train.py [--steps 3] [--batch 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from symaudit import SMSE
from symaudit.models import PRESETS, build, num_parameters

DEFAULT_PRESETS = ["unet-small", "vit-small", "gcnn-small", "unet-paper", "vit-paper"]


def bench(name: str, resolution: int, batch: int, steps: int) -> float:
    """Samples per second over ``steps`` timed steps (after one warm-up step)."""
    extra = {"resolution": resolution} if PRESETS[name].architecture == "vit" else {}
    torch.manual_seed(0)
    model = build(name, **extra)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-6)
    loss_fn = SMSE(torch.ones(4, dtype=torch.float64))
    x = torch.randn(batch, 4, resolution, resolution)
    y = torch.randn(batch, 4, resolution, resolution)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS)
    parser.add_argument("--resolutions", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"training samples/s on CPU ({args.threads} thread(s), batch {args.batch}, "
            f"{args.steps} timed steps; load average {os.getloadavg()[0]:.1f})"
        )
    )
    table.add_column("preset")
    table.add_column("parameters", justify="right")
    for r in args.resolutions:
        table.add_column(f"{r}²  samples/s", justify="right")
    for name in args.presets:
        row = []
        for r in args.resolutions:
            row.append(f"{bench(name, r, args.batch, args.steps):.2f}")
        extra = {"resolution": args.resolutions[-1]} if PRESETS[name].architecture == "vit" else {}
        count = f"{num_parameters(build(name, **extra)):,}"
        table.add_row(name, count, *row)
        print(f"{name}: {row}", flush=True)
    Console().print(table)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
