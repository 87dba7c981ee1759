"""Try symaudit's commands on bad input and faults; print one row per case and a tally.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/fault_sweep.py

Each case runs one CLI command in-process on a tiny dataset/run/audit built in a temporary
directory and is classified as: "error" (exit != 0, one `error:` line, no traceback), "ok"
(exit 0), "TRACEBACK" (an exception escaped) or "HANG" (still running after 60 s). The
expected outcome of every case is given; a case whose outcome differs is marked with "!!".
Interrupted writes (SIGKILL) and full disks are exercised by tests/test_reliability.py.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
from typer.testing import CliRunner

from symaudit.cli import app
from symaudit.data import write_dataset
from symaudit.diagnostics.audit import run_audit
from symaudit.fields import FieldLayout
from symaudit.training import TrainConfig, train
from symaudit.training.checkpoint import read_checkpoint, save_checkpoint


def _smooth(path: Path, n: int = 4, t: int = 4, h: int = 16, seed: int = 0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 4, h, h, generator=gen) * 0.2
    base[:, 0] += 1.0
    base[:, 3] += 2.0
    fields = torch.stack([torch.roll(base, k, dims=-1) for k in range(t)], dim=1)
    return write_dataset(path, fields, torch.arange(t) * 0.05, FieldLayout.euler(), {})


def _setup(root: Path) -> dict[str, Path]:
    p = {"root": root}
    p["data"] = _smooth(root / "data" / "a.h5")
    p["coarse"] = _smooth(root / "coarse.h5", h=32)
    p["nan"] = _smooth(root / "nan.h5")
    with h5py.File(p["nan"], "r+") as f:
        f["fields"][1, 2, 0, 3, 3] = np.nan
    p["trunc"] = root / "trunc.h5"
    p["trunc"].write_bytes(p["data"].read_bytes()[:5000])
    p["text"] = root / "notes.txt"
    p["text"].write_text("not data")
    cfg = TrainConfig(model="unet-tiny", data=[str(root / "data")], epochs=1, batch_size=4,
                      val_fraction=0.5)  # fmt: skip
    train(cfg, root / "run", progress=False)
    p["run"] = root / "run"
    run_audit(p["run"], ["c4"], out=root / "audit", test_batches=1, cosine=False)
    p["audit"] = root / "audit"
    for name, change in (("nanrun", "nan"), ("corruptrun", "flip")):
        d = root / name
        d.mkdir()
        if change == "nan":
            data = read_checkpoint(p["run"] / "checkpoint.pt")
            data["model_state"] = {k: v * torch.nan if v.is_floating_point() else v
                                   for k, v in data["model_state"].items()}  # fmt: skip
            save_checkpoint(d / "checkpoint.pt", data)
        else:
            raw = bytearray((p["run"] / "checkpoint.pt").read_bytes())
            mid = len(raw) // 3
            raw[mid : mid + 64] = bytes(b ^ 0xFF for b in raw[mid : mid + 64])
            (d / "checkpoint.pt").write_bytes(bytes(raw))
        p[name] = d
    p["badpiece"] = root / "badpiece"
    shutil.copytree(p["audit"], p["badpiece"])
    piece = next(p["badpiece"].rglob("influence.pt"))
    piece.write_bytes(piece.read_bytes()[:100])
    p["incomplete"] = root / "incomplete"
    shutil.copytree(p["audit"], p["incomplete"])
    meta = json.loads((p["incomplete"] / "audit.json").read_text())
    (p["incomplete"] / "audit.json").write_text(json.dumps({**meta, "complete": False}))
    p["file"] = root / "afile"
    p["file"].write_text("x")
    p["busy"] = root / "busy"
    (p["busy"] / "keep.txt").parent.mkdir()
    (p["busy"] / "keep.txt").write_text("user file")
    return p


def _cases(p: dict[str, Path]) -> list[tuple[str, list, str]]:
    r = p["root"]
    gen = ["generate", "--trajectories", "2", "--resolution", "8", "--snapshots", "3",
           "--t-final", "0.05", "--quiet", "--out"]  # fmt: skip
    tr = ["train", "--model", "unet-tiny", "--epochs", "1", "--batch-size", "4", "--quiet"]
    au = ["audit", "--run", p["run"], "--group", "c4", "--test-batches", "1", "--no-cosine",
          "--quiet"]  # fmt: skip
    return [
        ("generate: trajectories 0", [*gen, r / "g1.h5", "--trajectories", "0"], "error"),
        ("generate: resolution 3", [*gen, r / "g2.h5", "--resolution", "3"], "error"),
        ("generate: cfl 1e-9", [*gen, r / "g3.h5", "--cfl", "1e-9"], "error"),
        ("generate: cfl nan", [*gen, r / "g4.h5", "--cfl", "nan"], "error"),
        ("generate: t-final -1", [*gen, r / "g5.h5", "--t-final", "-1"], "error"),
        ("generate: unknown kind", [*gen, r / "g6.h5", "--kind", "bogus"], "error"),
        ("generate: --out is a directory", [*gen, r], "error"),
        ("generate: --out below a file", [*gen, p["file"] / "g.h5"], "error"),
        ("generate: existing output", [*gen, p["data"]], "error"),
        ("generate: cuda without GPU", [*gen, r / "g7.h5", "--device", "cuda"], "error"),
        ("generate: threads 0", [*gen, r / "g8.h5", "--threads", "0"], "error"),
        ("generate: batch-size 0", [*gen, r / "g9.h5", "--batch-size", "0"], "error"),
        ("generate: valid tiny run", [*gen, r / "g10.h5"], "ok"),
        ("train: missing data", [*tr, "--data", r / "nope", "--out", r / "t1"], "error"),
        ("train: truncated HDF5", [*tr, "--data", p["trunc"], "--out", r / "t2"], "error"),
        ("train: text file as data", [*tr, "--data", p["text"], "--out", r / "t3"], "error"),
        ("train: NaN in data", [*tr, "--data", p["nan"], "--out", r / "t4"], "error"),
        *[
            (
                f"train: lr {lr}",
                [*tr, "--data", p["data"], "--out", r / f"t5{i}", "--lr", lr],
                "error",
            )  # fmt: skip
            for i, lr in enumerate(["0", "inf", "nan", "-1"])
        ],
        (
            "train: weight decay nan",
            [*tr, "--data", p["data"], "--out", r / "t6", "--weight-decay", "nan"],
            "error",
        ),
        (
            "train: unknown model",
            [*tr[:2], "bogus", *tr[3:], "--data", p["data"], "--out", r / "t7"],
            "error",
        ),  # fmt: skip
        ("train: --out is a file", [*tr, "--data", p["data"], "--out", p["file"]], "error"),
        (
            "train: batch > transitions",
            [*tr, "--data", p["data"], "--out", r / "t8", "--batch-size", "999"],
            "error",
        ),
        (
            "train: bad --snapshots",
            [*tr, "--data", p["data"], "--out", r / "t9", "--snapshots", "x:y"],
            "error",
        ),
        (
            "train: bad --override",
            [*tr, "--data", p["data"], "--out", r / "t10", "--override", "nokey"],
            "error",
        ),  # fmt: skip
        (
            "train: epochs 0",
            [*tr, "--data", p["data"], "--out", r / "t11", "--epochs", "0"],
            "error",
        ),  # fmt: skip
        (
            "train: resume corrupt checkpoint",
            [*tr, "--data", p["data"], "--out", p["corruptrun"]],
            "error",
        ),
        (
            "train: resume with other settings",
            [*tr, "--data", p["data"], "--out", p["run"], "--lr", "0.1"],
            "error",
        ),
        ("audit: missing run", [*au[:2], r / "nope", *au[3:], "--out", r / "a1"], "error"),
        ("audit: unknown group", [*au[:4], "bogus", *au[5:], "--out", r / "a2"], "error"),
        ("audit: damping -1", [*au, "--out", r / "a3", "--damping", "-1"], "error"),
        ("audit: damping abc", [*au, "--out", r / "a4", "--damping", "abc"], "error"),
        ("audit: rtol 0", [*au, "--out", r / "a5", "--rtol", "0"], "error"),
        ("audit: rtol nan", [*au, "--out", r / "a6", "--rtol", "nan"], "error"),
        (
            "audit: metric batch train:999",
            [*au, "--out", r / "a7", "--metric-batch", "train:999"],
            "error",
        ),  # fmt: skip
        ("audit: metric batch bogus", [*au, "--out", r / "a8", "--metric-batch", "x"], "error"),
        (
            "audit: test data on 32^2",
            [*au, "--out", r / "a9", "--test-data", p["coarse"]],
            "error",
        ),  # fmt: skip
        (
            "audit: NaN in test data",
            [*au, "--out", r / "a10", "--test-data", p["nan"]],
            "error",
        ),  # fmt: skip
        ("audit: test-batches 0", [*au, "--out", r / "a11", "--test-batches", "0"], "error"),
        ("audit: per-family 99", [*au, "--out", r / "a12", "--per-family", "99"], "error"),
        ("audit: rank 0", [*au, "--out", r / "a13", "--rank", "0"], "error"),
        ("audit: max-iter 0", [*au, "--out", r / "a14", "--max-iter", "0"], "error"),
        ("audit: --out is a file", [*au, "--out", p["file"]], "error"),
        ("audit: NaN weights", [*au[:2], p["nanrun"], *au[3:], "--out", r / "a15"], "error"),
        (
            "audit: corrupt checkpoint",
            [*au[:2], p["corruptrun"], *au[3:], "--out", r / "a16"],
            "error",
        ),  # fmt: skip
        (
            "audit: other settings, no --overwrite",
            [*au[:4], "d4", *au[5:], "--out", p["audit"]],
            "error",
        ),
        ("report: missing directory", ["report", r / "nope", "--out", r / "r1"], "error"),
        ("report: incomplete audit", ["report", p["incomplete"], "--out", r / "r2"], "error"),
        (
            "report: truncated audit piece",
            ["report", p["badpiece"], "--out", r / "r3"],
            "error",
        ),  # fmt: skip
        ("report: --out is a file", ["report", p["audit"], "--out", p["file"]], "error"),
        ("report: --out holds user files", ["report", p["audit"], "--out", p["busy"]], "error"),
        (
            "report: same audit twice",
            ["report", p["audit"], p["audit"], "--out", r / "r4"],
            "ok",
        ),  # fmt: skip
        (
            "report: one checkpoint, two audits",
            ["report", p["audit"], p["badpiece"].with_name("audit2"), "--out", r / "r5"],
            "error",
        ),
        (
            "reproduce: unknown preset",
            ["reproduce", "--preset", "bogus", "--out", r / "p1"],
            "error",
        ),  # fmt: skip
        (
            "reproduce: --out is a file",
            ["reproduce", "--preset", "micro", "--out", p["file"]],
            "error",
        ),  # fmt: skip
    ]


def _timeout(*_args) -> None:
    raise TimeoutError("still running after 60 s")


def _classify(result) -> str:
    if isinstance(result.exception, TimeoutError):
        return "HANG"
    if result.exit_code == 0:
        return "ok"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return "TRACEBACK"
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    usage = any("Usage:" in ln for ln in lines)  # click's own option errors (exit 2, a box)
    one = len(lines) == 1 and lines[0].startswith("error: ")
    return "error" if one or usage else f"error ({len(lines)} lines)"


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="symaudit-faults-"))
    try:
        p = _setup(root)
        shutil.copytree(p["audit"], root / "audit2")  # the same checkpoint audited twice
        runner, tally, wrong = CliRunner(), {}, 0
        signal.signal(signal.SIGALRM, _timeout)
        for name, argv, expected in _cases(p):
            signal.alarm(60)
            res = runner.invoke(app, [str(a) for a in argv])
            signal.alarm(0)
            got = _classify(res)
            tally[got] = tally.get(got, 0) + 1
            mark = "  " if got == expected else "!!"
            wrong += got != expected
            first = (res.stderr.strip().splitlines() or [""])[-1][:110]
            print(f"{mark} {name:40s} {got:10s} {first}")
        print(f"{sum(tally.values())} cases: {tally}; {wrong} not as expected")
        return 1 if wrong else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
