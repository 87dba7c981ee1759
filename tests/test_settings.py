"""AuditSettings / InfluenceSettings: validated on construction, before anything is computed
or written, by the Python API, the command line and the pipeline alike."""

import dataclasses

import pytest
from typer.testing import CliRunner

from symaudit._io import json_digest
from symaudit.cli import app
from symaudit.diagnostics.audit import run_audit
from symaudit.diagnostics.settings import (
    DEFAULT_RELATIVE_DAMPING,
    AuditSettings,
    Damping,
    InfluenceSettings,
)
from symaudit.pipeline.presets import PRESETS
from symaudit.pipeline.run import reproduce

BAD = [
    ({"damping": "auto:-1"}, "fraction"),
    ({"damping": "autox"}, "damping"),
    ({"damping": -1.0}, "damping"),
    ({"damping": float("nan")}, "damping"),
    ({"damping_sweep": ["auto:0"]}, "fraction"),
    ({"rtol": 0.0}, "rtol"),
    ({"rtol": 1.5}, "rtol"),
    ({"metric_batch": "train:0"}, "metric batch"),
    ({"rank": 0}, "rank"),
    ({"max_iter": 0}, "max_iter"),
    ({"per_family": 0}, "per_family"),
    ({"groups": ["d5"]}, "d5"),
    ({"groups": ["shift-x:two"]}, "stride"),
    ({"groups": []}, "no groups"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_bad_settings_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        AuditSettings(**{"groups": ["d4"], **change})


def test_damping_is_parsed_once():
    assert Damping.parse("auto").fraction == DEFAULT_RELATIVE_DAMPING
    assert Damping.parse("auto:1e-2").resolve(3.0) == (
        pytest.approx(3e-2),
        "0.01 * top eigenvalue of eta",
    )
    assert Damping.parse("0.5").resolve(None) == (0.5, "absolute")
    assert Damping.parse(0.5).given == 0.5 and Damping.parse("auto:1e-2").given == "auto:1e-2"
    with pytest.raises(ValueError, match="no positive eigenvalue"):
        Damping.parse("auto").resolve(0.0)
    s = InfluenceSettings(dampings=["auto", 1e-3], rank=8, params="out")
    assert [d.relative for d in s.dampings] == [True, False] and s.params == ("out",)
    with pytest.raises(ValueError, match="solver"):
        InfluenceSettings(solver="minres")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rtol = 0.1


def test_the_digest_follows_the_settings():
    a = AuditSettings(groups=["d4", "shift-x"], damping="auto:1e-3", rtol=5e-3)
    same = AuditSettings(groups=("d4", "shift-x"), damping="auto:1e-3", rtol=5e-3)
    other = dataclasses.replace(a, rtol=1e-3)
    assert json_digest(a.record()) == json_digest(same.record())
    assert json_digest(a.record()) != json_digest(other.record())
    # the record reads back into the same settings
    assert AuditSettings.from_record(a.record()) == a
    # run_audit's keyword form is the settings' own
    assert AuditSettings(**a.options()) == a


def test_bad_settings_write_nothing(tmp_path):
    """A bad damping or rtol is refused before the run is read and before any output exists,
    from the Python API, the command line and the pipeline."""
    out = tmp_path / "audit"
    with pytest.raises(ValueError, match="rtol"):
        run_audit(tmp_path / "no-such-run", ["d4"], out=out, rtol=2.0)
    with pytest.raises(ValueError, match="damping"):
        run_audit(tmp_path / "no-such-run", ["d4"], out=out, damping="auto:x")
    assert not out.exists()
    for flag, value in (("--damping", "auto:-1"), ("--rtol", "0")):
        args = ["audit", "--run", str(tmp_path / "no-such-run"), "--group", "d4"]
        r = CliRunner().invoke(app, [*args, "--out", str(out), flag, value])
        assert r.exit_code == 2 and flag.strip("-") in r.output, r.output
        assert "no-such-run" not in r.output  # refused before the run was looked at
    assert not out.exists()
    study = dataclasses.replace(PRESETS["micro"], dampings=("auto:0",))
    with pytest.raises(ValueError, match="fraction"):
        reproduce(study, tmp_path / "study", progress=False)
    assert not (tmp_path / "study").exists()
