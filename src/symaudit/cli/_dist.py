"""Multi-process commands: join the torchrun process group, or start one (``--nproc K``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import typer


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch(nproc: int, option: str = "--nproc") -> None:
    """Run this very command again as ``nproc`` torchrun processes (without ``option``) and
    exit with their status: `python -m torch.distributed.run --standalone`."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    # "--": else torchrun's argparse takes e.g. --run for an abbreviation of its --run-path
    cmd += [f"--nproc-per-node={nproc}", "--", sys.argv[0], *args]
    raise typer.Exit(code=subprocess.run(cmd, check=False).returncode)


@contextlib.contextmanager
def process_group(device: str) -> Iterator[tuple[str, object | None, int]]:
    """Under torchrun: join the group (gloo on CPU, nccl on CUDA, one GPU per local rank) and
    yield (device, the WORLD group, rank); else (device, None, 0). Leaves the group after."""
    if not under_torchrun():
        yield device, None, 0
        return
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    try:
        yield device, dist.group.WORLD, dist.get_rank()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
