"""Boost response: exact for an exactly boost-equivariant map, fitted exponents of known power
laws, and the study/page pipeline (numbers on the page = boosts.json; resume)."""

import json
import math

import pytest
import torch
from torch import nn

from symaudit import SMSE, FieldLayout, models
from symaudit.diagnostics.boosts import (
    Rollout,
    boost_group,
    boost_response,
    linear_regime,
    local_exponents,
    min_boost_speed,
    power_law,
)
from symaudit.physics import initial_conditions as ics

LAYOUT = FieldLayout.euler()
DT, N = 0.0625, 16  # c_min = 1 / (steps * DT * N) = 1 / steps


class MeanFlowAdvection(nn.Module):
    """x -> (1 + w) T_k x, k = round(<m_x> / <rho> dt N): moves each state with its mean flow.
    Exactly Galilean-equivariant when c dt N is whole: a boost adds c to the mean velocity
    (k grows by c dt N) and the kick is linear in x (commutes with the scale 1 + w)."""

    def __init__(self, dt: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.25, dtype=torch.float64))
        self.dt = dt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x[:, 1].sum((-2, -1)) / x[:, 0].sum((-2, -1))
        k = [round(float(v.detach()) * self.dt * x.shape[-1]) for v in u]
        return (1 + self.w) * torch.stack(
            [torch.roll(s, kk, -1) for s, kk in zip(x, k, strict=True)]
        )


@pytest.fixture(scope="module")
def states():
    x = ics.sample("ce-rp", 3, N, seed=2).state
    # zero net x-momentum: the mean flow moves by 0 cells, away from any rounding tie
    x[:, 1] -= x[:, 0] * (x[:, 1].sum((-2, -1)) / x[:, 0].sum((-2, -1))).view(-1, 1, 1)
    rms = x.pow(2).mean((0, 2, 3)).sqrt()
    rms[1:3] = rms[1:3].pow(2).mean().sqrt()
    return x, SMSE(rms)


@pytest.mark.parametrize(("steps", "multiples"), [(1, [0, 1, 2, 5]), (3, [0, 3, 6, 15])])
def test_exactly_equivariant_map_has_zero_defect_at_every_speed(states, steps, multiples):
    # the map moves whole cells per step: with 3 steps, c dt N must be whole per step too
    x, loss = states
    f = MeanFlowAdvection(DT)
    group = boost_group(LAYOUT, N, DT, steps=steps, multiples=multiples)
    y = Rollout(f, steps)(x).detach()
    res = boost_response(f, loss, (x, y), group, steps=steps, influence=False)
    assert res.speeds.tolist() == pytest.approx([k / steps for k in multiples])
    # float64 round-off of (1 + w) K_c x vs K_c (1 + w) x, O(1) fields: SMSE ~ (1e-15)^2
    assert res.defect.max() < 1e-26
    assert res.kick_defect.max() < 1e-26
    # its own output is the target: E = D
    torch.testing.assert_close(res.error, res.defect, rtol=0, atol=1e-26)
    # the identity map is not boost-equivariant (the target is displaced by c T N cells)
    ident = boost_response(nn.Identity(), loss, (x, x), group, steps=steps, influence=False)
    assert (ident.defect[1:] > 1e-3).all()


def test_kick_defect_equals_defect_for_a_shift_equivariant_model(states):
    # a circular-padding convolution commutes with every whole-cell shift, so comparing at the
    # same grid position changes nothing: D_kick = D up to float64 round-off
    x, loss = states
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular").double()
    group = boost_group(LAYOUT, N, DT, steps=2, multiples=[0, 1, 3])
    y = Rollout(conv, 2)(x).detach()
    res = boost_response(conv, loss, (x, y), group, steps=2, influence=False)
    assert (res.defect[1:] > 1e-6).all()  # a generic conv is not boost-equivariant
    torch.testing.assert_close(res.kick_defect, res.defect, rtol=1e-10, atol=1e-26)


def test_influence_ratio_is_one_at_rest_and_cosine_bounded(states):
    x, loss = states
    torch.manual_seed(0)
    model = models.build("unet-tiny").double()
    group = boost_group(LAYOUT, N, DT, steps=2, multiples=[0, 1, 2])
    y = Rollout(model, 2)(x).detach() + 0.01
    res = boost_response(model, loss, (x, y), group, steps=2, cosine=True, rtol=1e-6)
    assert res.influence_ratio[0].tolist() == [1.0] * 3
    assert (res.cosine.abs() <= 1 + 1e-6).all()
    assert res.cosine[0] == pytest.approx(1.0, abs=1e-6)


def test_min_speed_and_group():
    assert min_boost_speed(64, 0.05, 10) == pytest.approx(1 / 32)
    g = boost_group(LAYOUT, 64, 0.05, steps=10, multiples=[0, 1, 4], direction="xy")
    assert [g_.velocity for g_ in g] == [(0, 0), (1 / 32, 1 / 32), (4 / 32, 4 / 32)]
    assert g[1].boost_cells(64, 64) == (1, 1)
    with pytest.raises(ValueError, match="include 0"):
        boost_group(LAYOUT, 64, 0.05, multiples=[1, 2])


def test_power_law_fits():
    c = [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
    v = [3 * x**1.5 for x in c]
    fit = power_law(c, v)
    assert fit["exponent"] == pytest.approx(1.5, abs=1e-12)
    assert fit["prefactor"] == pytest.approx(3.0, rel=1e-12)
    # linear at small c, quadratic beyond c0 = 0.5: v = c (1 + c / c0)
    w = [x * (1 + x / 0.5) for x in c]
    reg = linear_regime(c, w, points=2, tolerance=0.25)
    # two points: the fitted exponent is the first local one, 1 + log2(1.4 / 1.2)
    assert reg["exponent"] == pytest.approx(1 + math.log2(1.4 / 1.2), rel=1e-12)
    # local exponents log2((1 + 2c/c0) / (1 + c/c0)) + 1 exceed 1.25 once c >= c0 / 3
    loc = local_exponents(c, w)
    expect = [1 + math.log2((1 + 2 * a / 0.5) / (1 + a / 0.5)) for a in c[1:-1]]
    assert loc == pytest.approx(expect, rel=1e-12)
    # the range ends at the last speed reached by local exponents within 0.25 of the fit
    end = 1
    while end < len(loc) and abs(loc[end] - reg["exponent"]) <= 0.25:
        end += 1
    assert reg["max_speed"] == c[1:][end]
    assert reg["max_speed"] < 0.5  # below c0: the quadratic term is not yet dominant


def test_study_page_and_resume(micro_study, tmp_path, monkeypatch):
    from symaudit.diagnostics import boost_study
    from symaudit.report.boosts import boost_rows, build_boost_page

    run = micro_study / "runs" / "unet-tiny-s0"
    kw = dict(
        test_data=[micro_study / "data" / "test" / "ce-rp.h5"],
        per_family=2,
        multiples=[0, 1, 2],
        rank=8,
    )
    out = boost_study.run_boost_study([run], out=tmp_path, **kw)
    study = json.loads((out / "boosts.json").read_text())
    fam = study["models"][0]["families"]["ce-rp"]
    floor = study["floor"]["ce-rp"]
    assert fam["curves"]["defect"][0] == 0.0 and floor["curves"]["defect"][0] == 0.0
    assert floor["curves"]["defect"][1] > 0  # the solver is not boost-invariant
    assert floor["reproduction_error"] < 1e-13  # float32 storage of our own data
    page = build_boost_page(out).read_text()
    rows = boost_rows(study)
    assert rows[0]["D(c_min)"] == fam["curves"]["defect"][1]
    assert f"{fam['curves']['defect'][1]:.3g}" in page
    assert f"{floor['curves']['defect'][1]:.3g}" in page
    # a rerun finds every piece on disk and computes nothing
    monkeypatch.setattr(boost_study, "boost_response", lambda *a, **k: 1 / 0)
    boost_study.run_boost_study([run], out=tmp_path, **kw)
    assert json.loads((out / "boosts.json").read_text()) == study
