"""Dataset generation: determinism, batch independence, resumability after SIGKILL, no
half-written outputs, settings mismatch, solver-failure reporting, and the CLI."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from symaudit.cli import app
from symaudit.data import channel_rms, open_dataset
from symaudit.data.generate import GenerationError, GenerationSettings, generate, partial_path
from symaudit.fields import FieldLayout
from symaudit.physics import block_average, euler
from symaudit.physics.initial_conditions import sample

SMALL = GenerationSettings(
    kind="ce-rp", trajectories=5, resolution=16, snapshots=4, t_final=0.15, seed=11
)


def _fields(path):
    with h5py.File(path, "r") as f:
        return f["fields"][...]


def test_generation_is_deterministic_and_independent_of_batching(tmp_path):
    a = generate(SMALL, tmp_path / "a.h5", batch_size=2)
    b = generate(SMALL, tmp_path / "b.h5", batch_size=5)
    assert _fields(a).tobytes() == _fields(b).tobytes()
    with open_dataset(a) as ds:
        assert ds.num_trajectories == 5 and ds.num_snapshots == 4 and ds.resolution == (16, 16)
        torch.testing.assert_close(ds.times, torch.linspace(0, 0.15, 4, dtype=torch.float64))
        fields = ds.read()
        torch.testing.assert_close(ds.channel_rms, channel_rms(fields, FieldLayout.euler()))
        meta = ds.metadata
        assert meta["ic_kind"] == "ce-rp" and meta["seed"] == 11 and meta["gamma"] == 1.4
        assert meta["generation"] == SMALL.fingerprint()
        assert meta["ic_distribution"]["rho"] == [0.1, 1.0] and "source" in meta["ic_distribution"]
        assert meta["solver"]["cfl"] == 0.4 and meta["boundary"] == "periodic"
        ic = sample("ce-rp", 5, 16, seed=11)
        # Snapshot 0 is the sampled initial condition; parameters are stored per trajectory.
        assert torch.equal(fields[:, 0], ic.state.float())
        assert torch.equal(ds.read_params()["rho"], ic.params["rho"])
        # The solver really ran: later snapshots differ from the initial state.
        assert not torch.equal(fields[:, -1], fields[:, 0])
    other = generate(GenerationSettings(**{**SMALL.fingerprint(), "seed": 12}), tmp_path / "c.h5")
    assert _fields(other).tobytes() != _fields(a).tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5", "c.h5"]


def test_supersampling_stores_block_averages(tmp_path):
    s = GenerationSettings(
        kind="ce-crp", trajectories=2, resolution=8, snapshots=2, t_final=0.05, supersample=2
    )
    path = generate(s, tmp_path / "s.h5")
    fine = sample("ce-crp", 2, 16, seed=0).state
    with open_dataset(path) as ds:
        assert ds.resolution == (8, 8)
        assert torch.equal(ds.read(snapshots=[0])[:, 0], block_average(fine, 2).float())


_CHILD = """
import sys
from symaudit.data.generate import GenerationSettings, generate
settings = GenerationSettings(kind="ce-rp", trajectories=8, resolution=16, snapshots=4,
                              t_final=1.0, seed=3)
generate(settings, sys.argv[1], batch_size=2)
"""


def test_sigkill_then_resume_gives_the_uninterrupted_bytes(tmp_path):
    out = tmp_path / "run.h5"
    partial = partial_path(out)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)], env=env)
    done = np.zeros(0)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if partial.exists():
                try:
                    with h5py.File(partial, "r", locking=False) as f:
                        done = f["done"][...]
                except OSError:  # caught mid-creation: the file appears by os.replace
                    pass
                if done.sum() >= 2:  # the first chunk is written
                    break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL, "generation finished before it could be killed"
    assert 2 <= done.sum() < 8
    # Never a half-written file under the final name; the partial file is readable.
    assert not out.exists() and partial.exists()
    with open_dataset(partial, allow_incomplete=True) as ds:
        assert not ds.complete
        ds.read(np.flatnonzero(ds.done.numpy()))
    # The same settings resume it; the result equals an uninterrupted run byte for byte.
    settings = GenerationSettings(
        kind="ce-rp", trajectories=8, resolution=16, snapshots=4, t_final=1.0, seed=3
    )
    generate(settings, out, batch_size=3)
    reference = generate(settings, tmp_path / "ref.h5", batch_size=2)
    assert _fields(out).tobytes() == _fields(reference).tobytes()
    with open_dataset(out) as a, open_dataset(reference) as b:
        assert torch.equal(a.channel_rms, b.channel_rms)
        for name in a.param_names:
            assert torch.equal(a.read_params()[name], b.read_params()[name])
    assert not partial.exists()


def _fail_on_second_batch(monkeypatch):
    real = euler.evolve
    calls = []

    def evolve(state, times, **kw):
        calls.append(state.shape[0])
        if len(calls) == 2:
            raise euler.SolverError("pressure became negative", trajectory=1, time=0.125)
        return real(state, times, **kw)

    monkeypatch.setattr(euler, "evolve", evolve)
    return calls


def test_solver_failure_names_global_trajectory_and_keeps_finished_work(tmp_path, monkeypatch):
    _fail_on_second_batch(monkeypatch)
    out = tmp_path / "f.h5"
    with pytest.raises(GenerationError, match=r"trajectory 3 \(global index\) at t = 0\.125"):
        generate(SMALL, out, batch_size=2)
    assert not out.exists()
    with open_dataset(partial_path(out), allow_incomplete=True) as ds:
        assert ds.done.tolist() == [True, True, False, False, False]


def _interrupted(out, monkeypatch):
    """A partial run of SMALL with trajectories 0, 1 done (the second batch fails)."""
    _fail_on_second_batch(monkeypatch)
    with pytest.raises(GenerationError):
        generate(SMALL, out, batch_size=2)
    monkeypatch.undo()


def test_settings_mismatch_existing_output_and_overwrite(tmp_path, monkeypatch):
    clean = _fields(generate(SMALL, tmp_path / "clean.h5"))
    changed = GenerationSettings(**{**SMALL.fingerprint(), "seed": 99})
    out = tmp_path / "m.h5"
    _interrupted(out, monkeypatch)
    with pytest.raises(GenerationError, match="seed: file has 11, requested 99"):
        generate(changed, out, batch_size=2)
    with pytest.raises(GenerationError, match="resolution: file has 16, requested 8"):
        generate(GenerationSettings(**{**SMALL.fingerprint(), "resolution": 8}), out)
    # overwrite never discards a partial run of the same settings: it is resumed, and only
    # the missing trajectories are simulated.
    sizes = []
    real = euler.evolve

    def counting(state, times, **kw):
        sizes.append(len(state))
        return real(state, times, **kw)

    monkeypatch.setattr(euler, "evolve", counting)
    generate(SMALL, out, batch_size=2, overwrite=True)
    monkeypatch.undo()
    assert sizes == [2, 1]
    assert _fields(out).tobytes() == clean.tobytes()
    # A partial run of other settings is discarded by overwrite; the result is the clean one.
    other = tmp_path / "o.h5"
    _interrupted(other, monkeypatch)
    generate(changed, other, batch_size=2, overwrite=True)
    assert _fields(other).tobytes() == _fields(generate(changed, tmp_path / "c.h5")).tobytes()
    # A complete output is never replaced silently...
    before = other.read_bytes()
    with pytest.raises(GenerationError, match="already exists; pass --overwrite"):
        generate(SMALL, other)
    assert other.read_bytes() == before
    # ...and overwrite replaces it (only once the new file is complete).
    generate(SMALL, other, overwrite=True)
    assert _fields(other).tobytes() == clean.tobytes()
    assert not partial_path(other).exists() and not partial_path(out).exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kind": "ce-xx"}, "unknown kind"),
        ({"trajectories": 0}, "trajectories must be a positive integer"),
        ({"snapshots": 1}, "snapshots must be at least 2"),
        ({"t_final": -1.0}, "t_final must be a positive number"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"supersample": 0}, "supersample must be a positive integer"),
        ({"cfl": 2.0}, r"cfl must be in \[0.01, 1\]"),
        ({"cfl": 1e-9}, r"cfl must be in \[0.01, 1\]"),
        ({"device": "cuda"} if not torch.cuda.is_available() else {"device": "nope"}, "device"),
    ],
)
def test_bad_settings_are_rejected(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        generate(GenerationSettings(**{**SMALL.fingerprint(), **change}), tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


def test_cli_help_and_end_to_end(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "--help"])
    assert result.exit_code == 0
    for option in ("--kind", "--trajectories", "--supersample", "--batch-size", "--overwrite"):
        assert option in result.output
    out = tmp_path / "cli.h5"
    args = [
        "generate",
        "--kind",
        "ce-kh",
        "--trajectories",
        "2",
        "--resolution",
        "8",
        "--snapshots",
        "3",
        "--t-final",
        "0.1",
        "--seed",
        "4",
        "--threads",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with open_dataset(out) as ds:
        assert ds.num_trajectories == 2 and ds.metadata["ic_kind"] == "ce-kh"
        assert ds.metadata["generation"]["seed"] == 4
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(app, [*args[:2], "ce-nope", *args[3:-3], "--out", str(tmp_path / "y.h5")])
    assert bad.exit_code == 2 and "unknown kind" in bad.output
    bad = runner.invoke(app, ["generate", "--trajectories", "0", "--out", str(tmp_path / "z.h5")])
    assert bad.exit_code == 2 and "trajectories must be a positive integer" in bad.output
