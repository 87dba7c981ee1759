"""Initial-condition samplers: distributions, determinism, chunking, structure, positivity."""

import math

import numpy as np
import pytest
import torch

from symaudit.physics import conservative_to_primitive, evolve
from symaudit.physics.initial_conditions import DISTRIBUTIONS, KINDS, sample

QUADRANT_KINDS = ("ce-rp", "ce-crp", "ce-rpui")


def _prim(state):
    return conservative_to_primitive(state).unbind(1)  # rho, u, v, p, each (n, H, W)


def _centres(n):
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


@pytest.mark.parametrize("kind", KINDS)
def test_shape_dtype_determinism_and_chunks(kind):
    full = sample(kind, 7, 16, seed=5)
    assert full.state.shape == (7, 4, 16, 16) and full.state.dtype == torch.float64
    assert torch.isfinite(full.state).all()
    again = sample(kind, 7, 16, seed=5)
    assert torch.equal(full.state, again.state)
    # A chunk drawn on its own equals the same rows of the uninterrupted draw, params too.
    chunk = sample(kind, 3, 16, seed=5, start=2)
    assert torch.equal(chunk.state, full.state[2:5])
    for name, value in full.params.items():
        assert value.shape[0] == 7
        assert torch.equal(chunk.params[name], value[2:5])
    other = sample(kind, 7, 16, seed=6)
    assert not torch.equal(other.state, full.state)
    # Each row has its own draw (independent generators per trajectory); at 16^2 two CE-KH
    # layers can still rasterise identically, so compare the parameters.
    first = next(iter(full.params.values()))
    assert all(not torch.equal(first[i], first[i + 1]) for i in range(6))
    # dtype/device: built in float64 on the CPU, then cast.
    f32 = sample(kind, 2, 16, seed=5, dtype=torch.float32, device="cpu")
    assert torch.equal(f32.state, full.state[:2].float())


def test_distributions_pin_the_published_ranges():
    # Poseidon Appendix B (see docs/data.md): the sampler reads these tables, so pin them.
    for kind in ("ce-rp", "ce-crp"):
        d = DISTRIBUTIONS[kind]
        assert (d["rho"], d["v"], d["p"]) == ([0.1, 1.0], [-1.0, 1.0], [0.1, 1.0])
    d = DISTRIBUTIONS["ce-rpui"]
    assert (d["rho"], d["v"], d["p"]) == ([1.0, 3.0], [-10.0, 10.0], [5.0, 7.0])
    assert d["alpha"] == [-0.01, 0.01] and DISTRIBUTIONS["ce-crp"]["alpha"] == [-0.1, 0.1]
    assert DISTRIBUTIONS["ce-gauss"]["sigma"] == [0.01, 0.1]
    assert DISTRIBUTIONS["ce-gauss"]["count"] == 100
    for d in DISTRIBUTIONS.values():
        assert "Poseidon" in d["source"] and "disagreement" in d


@pytest.mark.parametrize("kind", QUADRANT_KINDS)
def test_quadrant_state_ranges(kind):
    dist = DISTRIBUTIONS[kind]
    ic = sample(kind, 400, 4, seed=0)
    for name, lo_hi in (
        ("rho", dist["rho"]),
        ("v_x", dist["v"]),
        ("v_y", dist["v"]),
        ("p", dist["p"]),
    ):
        lo, hi = lo_hi
        value = ic.params[name]
        assert value.shape == (400, 4)
        assert value.min() >= lo and value.max() <= hi
        # The full range is used, not a narrower one (1600 draws: gaps < 1% of the width).
        assert value.min() < lo + 0.01 * (hi - lo) and value.max() > hi - 0.01 * (hi - lo)
        assert abs(value.mean().item() - (lo + hi) / 2) < 0.05 * (hi - lo)
    if kind != "ce-rp":
        alo, ahi = dist["alpha"]
        assert ic.params["alpha"].min() >= alo and ic.params["alpha"].max() <= ahi
        assert ic.params["alpha"].max() > 0.9 * ahi
        assert 0 <= ic.params["beta"].min() and ic.params["beta"].max() <= 1


def test_ce_rp_is_four_constant_quadrants_matching_params():
    ic = sample("ce-rp", 5, 16, seed=1)
    rho, u, v, p = _prim(ic.state)
    x, y = _centres(16).view(1, 16), _centres(16).view(16, 1)
    for q, mask in enumerate(
        [
            (x < 0.5) & (y < 0.5),
            (x >= 0.5) & (y < 0.5),
            (x < 0.5) & (y >= 0.5),
            (x >= 0.5) & (y >= 0.5),
        ]
    ):
        for field, name in ((rho, "rho"), (u, "v_x"), (v, "v_y"), (p, "p")):
            expect = ic.params[name][:, q].view(5, 1, 1).expand(5, 16, 16)
            torch.testing.assert_close(field[:, mask], expect[:, mask], rtol=1e-12, atol=1e-12)
    # Periodic square: the quadrant states also jump across the domain edge.
    assert (ic.state[:, 0, :, 0] != ic.state[:, 0, :, -1]).all()


@pytest.mark.parametrize("kind, res", [("ce-crp", 24), ("ce-rpui", 64)])
def test_curved_interfaces_match_an_independent_evaluation(kind, res):
    # numpy re-evaluation of the published formula, term by term:
    # s_k = sum_ij alpha_kij sin(2 pi f_i x + f_j y + beta_kij), f = (1..P) (+ 2P^2 for RPUI).
    P = DISTRIBUTIONS[kind]["modes_P"]
    f = np.arange(1, P + 1) + (2 * P**2 if kind == "ce-rpui" else 0)
    ic = sample(kind, 4, res, seed=3)
    c = (np.arange(res) + 0.5) / res
    y, x = np.meshgrid(c, c, indexing="ij")
    for b in range(4):
        a, be = ic.params["alpha"][b].numpy(), ic.params["beta"][b].numpy()
        s = np.zeros((2, res, res))
        for k in range(2):
            for i in range(P):
                for j in range(P):
                    s[k] += a[k, i, j] * np.sin(2 * np.pi * f[i] * x + f[j] * y + be[k, i, j])
        X, Y = np.mod(x + s[0] + 1.0, 1.0), np.mod(y + s[1] + 1.0, 1.0)
        q = 2 * (Y >= 0.5) + (X >= 0.5)
        expect = ic.params["rho"][b].numpy()[q]
        np.testing.assert_array_equal(ic.state[b, 0].numpy(), expect)


def test_rpui_interfaces_stay_close_to_the_quadrant_lines():
    # |sigma| <= P^2 * 0.01 = 0.04: cells farther than that from x, y in {0, 1/2} keep the
    # straight-quadrant state.
    ic = sample("ce-rpui", 20, 64, seed=2)
    c = _centres(64)
    far = lambda t: torch.minimum((t - 0.5).abs(), torch.minimum(t, 1 - t)) > 0.045  # noqa: E731
    x, y = c.view(1, 64), c.view(64, 1)
    mask = far(x) & far(y)
    q = (2 * (y >= 0.5) + (x >= 0.5)).expand(64, 64)
    expect = ic.params["rho"][:, q]  # (20, 64, 64)
    assert torch.equal(ic.state[:, 0][:, mask], expect[:, mask])
    # ...while near the lines the interfaces really are perturbed in some sample.
    assert not torch.equal(ic.state[:, 0], expect)


def test_kelvin_helmholtz_layers():
    ic = sample("ce-kh", 4, 32, seed=0)
    rho, u, v, p = _prim(ic.state)
    assert set(rho.unique().tolist()) == {1.0, 2.0}
    torch.testing.assert_close(u, torch.where(rho == 2.0, -0.5, 0.5).double())
    assert (v == 0).all()
    torch.testing.assert_close(p, torch.full_like(p, 2.5))
    # The heavy layer sits between y = 0.25 and 0.75 up to eps = 0.05.
    c = _centres(32)
    assert (rho[:, (c < 0.2) | (c > 0.8)] == 1.0).all()
    assert (rho[:, (c > 0.3) & (c < 0.7)] == 2.0).all()


def test_gaussian_vortices_are_divergence_free_with_the_sampled_vorticity():
    n, r = 2, 32
    ic = sample("ce-gauss", n, r, seed=4)
    rho, u, v, p = _prim(ic.state)
    assert (rho == 0.1).all()
    torch.testing.assert_close(p, torch.full_like(p, 2.5), rtol=1e-12, atol=1e-12)
    k = torch.fft.fftfreq(r, 1.0 / r, dtype=torch.float64) * 2 * math.pi
    ky, kx = k.view(r, 1), k.view(1, r)
    uh, vh = torch.fft.fft2(u), torch.fft.fft2(v)
    div = torch.fft.ifft2(1j * kx * uh + 1j * ky * vh).real
    assert div.abs().max() < 1e-10
    vort = torch.fft.ifft2(1j * kx * vh - 1j * ky * uh).real
    nyquist = (kx.abs() == math.pi * r) | (ky.abs() == math.pi * r)
    c = _centres(r)
    for b in range(n):
        a, s, ctr = ic.params["alpha"][b], ic.params["sigma"][b], ic.params["centre"][b]
        dx = (c.view(1, 1, r) - ctr[:, 0, None, None] + 0.5) % 1.0 - 0.5
        dy = (c.view(1, r, 1) - ctr[:, 1, None, None] + 0.5) % 1.0 - 0.5
        w = (
            a.view(-1, 1, 1)
            / s.view(-1, 1, 1)
            * torch.exp(-(dx**2 + dy**2) / (2 * s.view(-1, 1, 1) ** 2))
        ).sum(0)
        # Spectral curl of the velocity returns the sampled vorticity without its mean and
        # Nyquist modes (where a derivative is undefined).
        w_hat = torch.fft.fft2(w)
        w_hat[0, 0] = 0
        w_hat[nyquist] = 0
        expect = torch.fft.ifft2(w_hat).real
        torch.testing.assert_close(vort[b], expect, rtol=0, atol=1e-9 * w.abs().max())


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown initial-condition kind"):
        sample("ce-xx", 1, 8, seed=0)
    with pytest.raises(ValueError, match="n must be"):
        sample("ce-rp", -1, 8, seed=0)
    with pytest.raises(ValueError, match="resolution"):
        sample("ce-rp", 1, 1, seed=0)
    with pytest.raises(ValueError, match="start"):
        sample("ce-rp", 1, 8, seed=0, start=-2)
    with pytest.raises(ValueError, match="gamma"):
        sample("ce-rp", 1, 8, seed=0, gamma=1.0)
    assert sample("ce-rp", 0, 8, seed=0).state.shape == (0, 4, 8, 8)


def test_ce_rpui_batch_stays_positive_over_the_full_horizon():
    # The hardest family (|v| up to 10): evolve a batch to t = 1 at 16^2; the solver raises
    # SolverError on any loss of positivity, and we check the stored snapshots too.
    ic = sample("ce-rpui", 4, 16, seed=0)
    times = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    traj = evolve(ic.state, times)
    assert traj.shape == (4, 11, 4, 16, 16)
    rho, u, v, p = conservative_to_primitive(traj).unbind(2)
    assert (rho > 0).all() and (p > 0).all() and torch.isfinite(traj).all()
    # Periodic domain: total mass and energy conserved to round-off.
    mass = traj[:, :, 0].sum((-1, -2))
    energy = traj[:, :, 3].sum((-1, -2))
    torch.testing.assert_close(mass, mass[:, :1].expand_as(mass), rtol=1e-12, atol=0)
    torch.testing.assert_close(energy, energy[:, :1].expand_as(energy), rtol=1e-12, atol=0)
