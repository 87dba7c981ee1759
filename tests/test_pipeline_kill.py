"""A `symaudit reproduce` process SIGKILLed in the middle of a stage resumes: the finished
units are skipped untouched, only the killed unit (continuing from its pieces on disk) and
the units after it run, and the final outputs agree with an uninterrupted computation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from symaudit.diagnostics.audit import load_audit, run_audit
from symaudit.pipeline import PRESETS
from symaudit.pipeline.run import plan

MICRO = PRESETS["micro"]


def _pieces(audit_name: str) -> int:
    """Result files of a finished audit: per audited group, family and batch,
    equivariance.pt, influence.pt and one sweep-<j>.pt per extra damping."""
    mp = next(m for m in MICRO.models if audit_name.startswith(m.preset + "-"))
    groups = mp.audit_groups(MICRO)
    return (1 + len(MICRO.dampings)) * len(groups) * len(MICRO.families) * MICRO.test_batches


def _cmd(out: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from symaudit.cli import main; main()",
        "reproduce",
        "--preset",
        "micro",
        "--out",
        str(out),
        "--quiet",
    ]


def _half_done_audit(out: Path, names: list[str]) -> str | None:
    """The audit unit that has written some but not all of its pieces and no manifest."""
    for name in names:
        n = len(list((out / "audits" / name).rglob("*.pt")))
        if 0 < n < _pieces(name) and not (out / "manifests" / f"audit__{name}.json").exists():
            return name
    return None


def _snapshot(paths: list[Path]) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


def test_sigkill_mid_audit_then_rerun_redoes_only_the_killed_unit_and_later(tmp_path):
    out = tmp_path / "study"
    units = plan(MICRO, out)
    names = [u.name for u in units]
    audit_names = [n.split("/", 1)[1] for n in names if n.startswith("audit/")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cmd(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:  # poll the files: kill as soon as an audit is part-way
        assert proc.poll() is None, "finished before it could be killed:\n" + (
            proc.stdout.read().decode()
        )
        assert time.monotonic() < deadline, "reproduce made no progress"
        victim = _half_done_audit(out, audit_names)
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    manifests = out / "manifests"
    finished = [n for n in names if (manifests / (n.replace("/", "__") + ".json")).exists()]
    killed = names.index(f"audit/{victim}")
    # everything before the killed unit finished, nothing from it on did
    assert finished == names[:killed], (finished, victim)
    kept_pieces = sorted((out / "audits" / victim).rglob("*.pt"))
    assert 0 < len(kept_pieces) < _pieces(victim), "the kill must land inside the audit"
    before = _snapshot(
        [manifests / (n.replace("/", "__") + ".json") for n in finished]
        + sorted((out / "data").rglob("*.h5"))
        + sorted((out / "runs").rglob("checkpoint.pt"))
        + kept_pieces
    )

    done = subprocess.run(_cmd(out), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ran, unchanged = len(names) - killed, killed
    assert f"done: {ran} units ran, {unchanged} unchanged" in done.stdout, done.stdout
    # finished units were skipped: their manifests, data, checkpoints, and the killed
    # audit's pieces already on disk are bit-for-bit and timestamp-for-timestamp untouched
    assert _snapshot(list(before)) == before
    for n in names[killed:]:
        assert (manifests / (n.replace("/", "__") + ".json")).exists(), n
    assert len(list((out / "audits" / victim).rglob("*.pt"))) == _pieces(victim)

    # the resumed audit equals one computed in a single uninterrupted call
    fresh = tmp_path / "fresh"
    unit = next(u for u in plan(MICRO, out) if u.name == f"audit/{victim}")
    run_audit(  # the pipeline's own settings for this audit
        out / "runs" / victim, **unit.settings, out=fresh, test_data=[str(out / "data" / "test")]
    )
    a, b = load_audit(out / "audits" / victim), load_audit(fresh)
    for spec in unit.settings["groups"]:
        torch.testing.assert_close(a.equivariance[spec][0].error, b.equivariance[spec][0].error)
        torch.testing.assert_close(
            a.influence[spec][0].diagonal("cosine"), b.influence[spec][0].diagonal("cosine")
        )
    # and the report covers every run with the audits' numbers
    report = json.loads((out / "report" / "report.json").read_text())
    for mp in MICRO.models:
        for s in MICRO.seeds:
            rec = load_audit(out / "audits" / f"{mp.preset}-s{s}")
            got = report["models"][mp.preset]["test_one_step"][str(s)]
            assert got == rec.test_errors["all"]["one_step"]
