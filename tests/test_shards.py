"""Sharded generation: N processes write disjoint trajectory ranges; the merge is bitwise the
file one process writes, and refuses incomplete or foreign shards."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from symaudit.data.generate import (
    GenerationError,
    GenerationSettings,
    generate,
    merge_shards,
    parse_shard,
    shard_path,
)

SETTINGS = GenerationSettings(
    kind="ce-crp", trajectories=7, resolution=8, snapshots=3, t_final=0.05, seed=4
)


def _datasets(path) -> dict:
    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda k, v: out.update({k: v[...]}) if isinstance(v, h5py.Dataset) else None)
        out["attrs"] = {k: f.attrs[k] for k in f.attrs}
    return out


def test_merged_shards_are_bitwise_one_process(tmp_path):
    one = generate(SETTINGS, tmp_path / "one.h5", batch_size=3)
    out = tmp_path / "sharded.h5"
    # shards from separate processes, as array-job tasks would run them
    code = (
        "import sys; from symaudit.data.generate import GenerationSettings, generate; "
        "s = GenerationSettings(kind='ce-crp', trajectories=7, resolution=8, snapshots=3, "
        "t_final=0.05, seed=4); generate(s, sys.argv[1], batch_size=2, shard=(int(sys.argv[2]), 3))"
    )
    for i in range(3):
        subprocess.run([sys.executable, "-c", code, str(out), str(i)], check=True)
    with h5py.File(shard_path(out, 1, 3)) as f:
        assert f["fields"].shape[0] == 7 * 2 // 3 - 7 // 3  # rows 2..3
    merge_shards(SETTINGS, out, 3)
    a, b = _datasets(one), _datasets(out)
    assert a.keys() == b.keys()
    for k in a:
        if k == "attrs":
            assert a[k].keys() == b[k].keys()
            for name in a[k]:
                assert np.array_equal(a[k][name], b[k][name]), name
        else:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert one.read_bytes() == out.read_bytes()  # the same bytes, not just the same values


def test_merge_refuses_missing_foreign_or_existing(tmp_path):
    out = tmp_path / "d.h5"
    generate(SETTINGS, out, shard=(0, 2))
    with pytest.raises(GenerationError, match=r"shard 1/2 .* missing"):
        merge_shards(SETTINGS, out, 2)
    other = GenerationSettings(**{**SETTINGS.__dict__, "seed": 5})
    generate(other, out, shard=(1, 2))
    with pytest.raises(GenerationError, match="other settings"):
        merge_shards(SETTINGS, out, 2)
    generate(SETTINGS, out, shard=(1, 2), overwrite=True)
    merge_shards(SETTINGS, out, 2)
    with pytest.raises(GenerationError, match="already exists"):
        merge_shards(SETTINGS, out, 2)
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_pipeline_generate_stage_merges_array_job_shards(tmp_path):
    """`reproduce --shard I/N` tasks write shards of every data file; the generate stage of a
    later `reproduce` merges them instead of simulating, into the one-process bytes."""
    from symaudit.pipeline import PRESETS, plan
    from symaudit.pipeline.run import complete_shards, generate_shard

    micro = PRESETS["micro"]
    out = tmp_path / "study"
    for i in range(2):
        written = generate_shard(micro, out, (i, 2))
        assert len(written) == 2 * len(micro.families)  # train and test file of each family
    units = [u for u in plan(micro, out) if u.stage == "generate"]
    assert all(complete_shards(u.output) == 2 for u in units)
    for u in units:
        u.work()
    u = units[0]
    ref = generate(GenerationSettings(**u.settings), tmp_path / "ref.h5")
    assert ref.read_bytes() == u.output.read_bytes()
