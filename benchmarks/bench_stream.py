"""Peak memory and speed of training with the data in memory vs streamed from the files.

    python benchmarks/bench_stream.py --data DIR_OR_FILE [--steps 40] [--model unet-tiny]

Each mode trains in its own subprocess for ``--steps`` optimiser steps (balance 0, one epoch
budget) and reports its peak RSS (``ru_maxrss``) and seconds per step. Make a dataset larger
than a fifth of the RAM with the project's own generator at a cheap setting, e.g.
``symaudit generate --kind ce-rp --trajectories 960 --resolution 128 --t-final 0.005
--dtype float32 --out big/ce-rp.h5`` (5.3 GB; docs/reproduce.md has the measured figures).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def _child(args: argparse.Namespace) -> None:
    import torch

    from symaudit.data.transitions import selected_nbytes
    from symaudit.training import TrainConfig, train

    torch.set_num_threads(1)
    cfg = TrainConfig(
        model=args.model,
        data=[args.data],
        epochs=1,
        batch_size=args.batch_size,
        val_fraction=0.001,
        data_loading=args.mode,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, tmp, progress=False, stop_after_steps=args.steps)
        seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "mode": args.mode,
                "dataset_bytes": selected_nbytes(args.data),
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "seconds": seconds,
                "steps": args.steps,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default="unet-tiny")
    ap.add_argument("--modes", default="stream,memory")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return _child(args)
    rows = []
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--data", args.data, "--steps", str(args.steps)]
        cmd += ["--batch-size", str(args.batch_size), "--model", args.model, "--mode", mode]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{mode:7s} dataset {r['dataset_bytes'] / 1e9:.2f} GB  peak RSS "
            f"{r['peak_rss_bytes'] / 1e9:.2f} GB  {r['seconds']:.1f} s for {r['steps']} steps "
            "(including loading)",
            flush=True,
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
