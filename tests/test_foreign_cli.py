"""`symaudit audit --model FILE.py:FACTORY` on a The Well file, end to end (the README's worked
example, shrunk), and the clear errors around it."""

import json
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from _well_files import write_well_file
from symaudit.cli import app
from symaudit.diagnostics.audit import load_audit
from symaudit.models.foreign import ForeignModelError, load_factory, load_weights, parse_layout

USER_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular")
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return x + 0.1 * self.bn(self.conv(x))

    def make():
        torch.manual_seed(0)
        return Net()
    """
)


@pytest.fixture
def user_files(tmp_path):
    (tmp_path / "my_model.py").write_text(USER_MODEL)
    model = load_factory(f"{tmp_path / 'my_model.py'}:make")
    with torch.no_grad():
        model.conv.weight.mul_(2.0)  # trained elsewhere: weights differ from the factory's
    torch.save({"model_state_dict": model.state_dict(), "epoch": 7}, tmp_path / "ckpt.pt")
    write_well_file(tmp_path / "well.hdf5", n=16, steps=4, trajectories=2)
    write_well_file(tmp_path / "open.hdf5", n=16, steps=4, periodic=False)
    return tmp_path


def _audit(d, *extra):
    args = [
        "audit",
        "--model", f"{d / 'my_model.py'}:make",
        "--weights", str(d / "ckpt.pt"),
        "--layout", "rho,m_x:m_y,E",
        "--resolution", "8",
        "--test-batches", "1",
        "--per-family", "2",
        "--quiet",
        *extra,
    ]  # fmt: skip
    return CliRunner().invoke(app, args)


def test_cli_audits_a_users_model_on_a_well_file(user_files):
    d = user_files
    r = _audit(
        d,
        "--test-data", str(d / "well.hdf5"),
        "--group", "d4", "--group", "shift-x:2", "--group", "d4*shift-xy:4",
        "--out", str(d / "audit"),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rec = load_audit(d / "audit")
    assert rec.model == "make" and rec.architecture == "foreign"
    settings = rec.meta["settings"]
    assert settings["channel_rms_source"] == "test data"
    assert settings["test_data"]["euler_multi_quadrants_periodicBC"]["resolution"] == [8, 8]
    inf = rec.influence["shift-x:2"][0]
    # a circular conv with BatchNorm in eval mode: exactly shift-equivariant, cosine 1
    assert torch.allclose(inf.diagonal("cosine"), torch.ones(4, 2, dtype=torch.float64), atol=1e-3)
    eq = rec.equivariance["d4*shift-xy:4"][0]
    assert len(eq.elements) == 8 * 4
    # the loaded weights, not the factory's, were audited
    fresh = load_factory(f"{d / 'my_model.py'}:make")
    from symaudit.diagnostics import model_checksum

    assert rec.meta["run"]["model_checksum"] != model_checksum(fresh)
    load_weights(fresh, d / "ckpt.pt")
    assert rec.meta["run"]["model_checksum"] == model_checksum(fresh)
    # the report reads the audit and shows every group
    r = CliRunner().invoke(app, ["report", str(d / "audit"), "--out", str(d / "report")])
    assert r.exit_code == 0, r.output
    shown = json.loads((d / "report" / "report.json").read_text())
    text = json.dumps(shown)
    page = (d / "report" / "index.html").read_text()
    for spec in ("d4", "shift-x:2", "d4*shift-xy:4"):
        assert spec in text and f"<code>{spec}</code>" in page, spec


def test_cli_refuses_translations_on_open_boundaries(user_files):
    d = user_files
    r = _audit(d, "--test-data", str(d / "open.hdf5"), "--group", "shift-x", "--out", str(d / "a"))
    assert r.exit_code == 2
    assert "not periodic along x" in r.output
    ok = _audit(d, "--test-data", str(d / "open.hdf5"), "--group", "c4", "--out", str(d / "b"))
    assert ok.exit_code == 0, ok.output


def test_clear_errors_for_bad_model_weights_and_layout(tmp_path, user_files):
    with pytest.raises(ForeignModelError, match="FILE.py:FACTORY"):
        load_factory("no_colon_here")
    with pytest.raises(ForeignModelError, match="no callable 'nope'"):
        load_factory(f"{user_files / 'my_model.py'}:nope")
    model = load_factory(f"{user_files / 'my_model.py'}:make")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ForeignModelError, match="do not fit the model"):
        load_weights(model, tmp_path / "bad.pt")
    with pytest.raises(ForeignModelError, match="vector is X:Y"):
        parse_layout("rho,m_x:m_y:m_z,E")
    layout = parse_layout("h,u:v")
    assert layout.vectors == {"u:v": (1, 2)} and layout.scalars == (0,)
    assert parse_layout("rho, m_x:m_y, E").vectors == {"momentum": (1, 2)}


def test_data_channels_follow_the_models_layout_by_name(user_files):
    from symaudit.data.sources import read_trajectories, to_layout

    data = read_trajectories(user_files / "well.hdf5", trajectories=[0])
    perm = to_layout(data, parse_layout("E,rho,m_x:m_y"))
    assert torch.equal(perm[:, :, 0], data.fields[:, :, 3])
    assert torch.equal(perm[:, :, 2:], data.fields[:, :, 1:3])
    with pytest.raises(ValueError, match="another arrangement"):
        to_layout(data, parse_layout("rho,m_y:m_x,E"))  # components swapped
