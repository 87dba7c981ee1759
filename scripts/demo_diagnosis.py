"""Short training experiments behind the demo preset's settings (docs/reproduce.md, "Why the
demo balances the families"): train one model on a study's data and print, per family, the
one-step test SMSE divided by the persistence forecast's.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/demo_diagnosis.py DEMO_OUT --model unet-small \\
        --epochs 8 --lr 2e-3 --balance 0.5 [--zero-head] [--overrides '{"channels": 4}']

DEMO_OUT is a `symaudit reproduce` output (reads DEMO_OUT/data/{train,test}). Same loss,
optimiser (Adam, weight decay 1e-6), cosine schedule, split (val_fraction 0.1, seed) and
family weights (`symaudit.training.family_weights`) as the trainer; no checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import nn

from symaudit.data.store import open_dataset
from symaudit.data.transitions import expand_paths, load_transitions
from symaudit.models import build
from symaudit.training import SMSE, family_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study")
    ap.add_argument("--model", default="unet-small")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--balance", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zero-head", action="store_true", help="start exactly at persistence")
    ap.add_argument("--overrides", default="{}", help="model constructor arguments (JSON)")
    args = ap.parse_args()
    torch.set_flush_denormal(True)

    data = load_transitions(f"{args.study}/data/train", val_fraction=0.1, seed=args.seed)
    loss = SMSE(data.channel_rms)
    overrides = json.loads(args.overrides)
    if args.model.startswith("vit"):
        overrides.setdefault("resolution", list(data.train.shape[-2:]))
    torch.manual_seed(args.seed)
    model = build(args.model, **overrides)
    if args.zero_head:
        head = {"unet": "head", "vit": "unpatch"}[model.symaudit_config["architecture"]]
        nn.init.zeros_(getattr(model, head).weight)
        nn.init.zeros_(getattr(model, head).bias)

    weights = family_weights(data, loss, args.balance)
    counts = torch.tensor([len(tr) for tr, _ in data.split.values()])
    traj_w = torch.repeat_interleave(torch.tensor(list(weights.values())), counts)
    t = data.train.shape[1]
    x, y = data.train[:, :-1].flatten(0, 1), data.train[:, 1:].flatten(0, 1)
    w = traj_w.repeat_interleave(t - 1).float()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-6)
    steps = x.shape[0] // args.batch_size
    total, step, t0 = steps * args.epochs, 0, time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        order, run = torch.randperm(x.shape[0], generator=gen), 0.0
        for b in range(steps):
            i = order[b * args.batch_size : (b + 1) * args.batch_size]
            for group in opt.param_groups:
                group["lr"] = 0.5 * args.lr * (1 + math.cos(math.pi * step / total))
            batch_loss = (loss.per_sample(model(x[i]), y[i]) * w[i]).mean()
            opt.zero_grad()
            batch_loss.backward()
            opt.step()
            step += 1
            run += float(batch_loss.detach())
        print(f"epoch {epoch + 1}: train {run / steps:.4g} ({time.perf_counter() - t0:.0f} s)")

    model.eval()
    print(f"{args.model} balance {args.balance}: test one-step SMSE / persistence")
    with torch.no_grad():
        for path in expand_paths(f"{args.study}/data/test"):
            with open_dataset(path) as ds:
                traj = ds.read()
            xi, yi = traj[:, :-1].flatten(0, 1), traj[:, 1:].flatten(0, 1)
            m = float(loss.per_sample(model(xi), yi).mean())
            p = float(loss.per_sample(xi, yi).mean())
            print(f"  {path.stem:8s} {m:.4g} / {p:.4g} = {m / p:.3f}")


if __name__ == "__main__":
    main()
