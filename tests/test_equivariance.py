"""Forward-pass equivariance diagnostics: exact zeros for equivariant maps, exact values for a
known symmetry breaker, E_e = plain test loss, persistence."""

import pytest
import torch
from torch import nn

from symaudit import SMSE, Channel, FieldLayout, LayoutError
from symaudit.diagnostics import EquivarianceFileError, EquivarianceResult, equivariance_error
from symaudit.groups import Dihedral4, GalileanBoost, Translations
from symaudit.physics.euler import evolve
from test_groups_euler import four_quadrant, smooth_state

EULER = FieldLayout.euler()
RMS = torch.tensor([1.0, 0.7, 0.7, 2.5], dtype=torch.float64)


def transitions(n: int, size: int, gen: torch.Generator, dtype=torch.float64):
    x = torch.randn(n, 4, size, size, generator=gen, dtype=dtype)
    return x, x + 0.1 * torch.randn(n, 4, size, size, generator=gen, dtype=dtype)


class Smoother(nn.Module):
    """x + alpha_c * (5-point periodic Laplacian of x), per channel. D4- and shift-equivariant
    when the two momentum components share alpha (a rotation mixes them)."""

    def __init__(self, alpha) -> None:
        super().__init__()
        self.register_buffer("alpha", torch.as_tensor(alpha, dtype=torch.float64).view(-1, 1, 1))

    def forward(self, x):
        lap = x.roll(1, -1) + x.roll(-1, -1) + x.roll(1, -2) + x.roll(-1, -2) - 4 * x
        return x + self.alpha * lap


class AddField(nn.Module):
    """x + b for a fixed random field b: breaks every symmetry that moves b."""

    def __init__(self, b) -> None:
        super().__init__()
        self.register_buffer("b", b)

    def forward(self, x):
        return x + self.b


class EulerStep(nn.Module):
    def __init__(self, dt: float) -> None:
        super().__init__()
        self.dt = dt

    def forward(self, x):
        return evolve(x, [self.dt])[:, -1]


def d4_and_shifts(size: int):
    return Dihedral4(EULER) * Translations(EULER, "xy", [0, 3], size=size)


def test_identity_and_shared_scale_smoother_have_zero_defect(rng):
    batch = transitions(5, 8, rng)
    group = d4_and_shifts(8)
    loss = SMSE(RMS)
    for model in (nn.Identity(), Smoother([0.1, 0.2, 0.2, 0.05])):
        res = equivariance_error(model, batch, group, loss, chunk_size=2)
        assert res.elements == list(group.names) and res.defect.shape == (32, 5)
        assert res.defect.abs().max() < 1e-28, type(model).__name__
    # distinct scales for m_x and m_y: reflections still commute (they only negate m_x),
    # odd rotations mix the components and do not -- the defect sees exactly that
    res = equivariance_error(Smoother([0.1, 0.2, 0.05, 0.05]), batch, Dihedral4(EULER), loss)
    d = dict(zip(res.elements, res.defect.max(dim=1).values.tolist(), strict=True))
    assert max(d["e"], d["s"], d["r2"], d["r2s"]) < 1e-28  # round-off: neighbour sum order
    assert min(d["r"], d["r3"], d["rs"], d["r3s"]) > 1e-4


def test_circular_cnn_is_shift_but_not_rotation_equivariant(rng):
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, padding_mode="circular"),
        nn.GELU(),
        nn.Conv2d(8, 4, 3, padding=1, padding_mode="circular"),
    ).double()
    batch = transitions(4, 12, rng)
    loss = SMSE(RMS)
    shifts = Translations(EULER, "xy", range(0, 12, 5))
    res = equivariance_error(cnn, batch, shifts, loss)
    assert res.defect.max() < 1e-26
    d4 = equivariance_error(cnn, batch, Dihedral4(EULER), loss)
    assert d4.defect[0].max() == 0 and d4.defect[1:].min() > 1e-6


def test_symmetry_breaker_defect_is_exact(rng):
    b = torch.randn(4, 8, 8, generator=rng, dtype=torch.float64)
    batch = transitions(3, 8, rng)
    loss = SMSE(RMS)
    group = d4_and_shifts(8)
    res = equivariance_error(AddField(b), batch, group, loss)
    # D_g = SMSE(g x + b, g x + g b) = SMSE(b, g b) for every state
    for i, g in enumerate(group):
        expect = loss(b, g(b)).item()
        torch.testing.assert_close(res.defect[i], torch.full((3,), expect, dtype=torch.float64))
    assert res.defect[1:].min() > 0.1


def test_error_of_identity_element_is_the_plain_test_loss(rng):
    torch.manual_seed(1)
    model = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular").double()
    x_t, x_t1 = transitions(7, 8, rng)
    loss = SMSE(RMS)
    res = equivariance_error(model, (x_t, x_t1), Dihedral4(EULER), loss, chunk_size=3)
    with torch.no_grad():
        plain = loss.per_sample(model(x_t), x_t1)
    # a sum of n = C*H*W nonnegative terms, possibly in another order or another chunking of
    # the convolution: relative error <= gamma_n ~ n eps64 (Higham, Accuracy and Stability, 4.2)
    tol = x_t[0].numel() * torch.finfo(torch.float64).eps
    torch.testing.assert_close(res.error[0], plain, rtol=tol, atol=0)
    torch.testing.assert_close(res.augmented_error, res.error.mean(0))
    # chunking does not change anything
    again = equivariance_error(
        model, (x_t, x_t1), Dihedral4(EULER), loss, chunk_size=100, progress=True
    )
    torch.testing.assert_close(again.error, res.error, rtol=tol, atol=0)
    torch.testing.assert_close(again.defect, res.defect, rtol=tol, atol=0)


def test_runs_in_the_requested_dtype_and_restores_training_mode(rng):
    model = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Dropout(0.5))  # float32 parameters
    model.train()
    batch = transitions(2, 8, rng)  # float64 data: moved to the model's dtype
    res = equivariance_error(model, batch, Dihedral4(EULER), SMSE(RMS))
    assert model.training and res.settings["dtype"] == "float32"
    assert res.settings["device"] == "cpu"
    assert res.defect[0].max() == 0  # eval mode: dropout off, deterministic
    res64 = equivariance_error(
        nn.Identity(), batch, Dihedral4(EULER), SMSE(RMS), dtype=torch.float64
    )
    assert res64.settings["dtype"] == "float64"


def test_euler_step_as_model_has_zero_defect(rng):
    n, dt = 16, 0.02
    u0 = torch.cat([four_quadrant(n, rng), smooth_state(n)])
    step = EulerStep(dt)
    batch = (u0, step(u0))
    loss = SMSE(torch.tensor([1.0, 0.5, 0.5, 3.0]))
    res = equivariance_error(step, batch, d4_and_shifts(n), loss)
    assert res.defect.max() == 0 and res.error.max() == 0
    # a boost observed at the step (c dt = 1 cell) is a symmetry of the PDE but only
    # approximately of the scheme (its numerical diffusion is frame dependent): on the smooth
    # state the defect is small compared with the step's own change, on shocks it is not
    boost = GalileanBoost(EULER, (1 / (dt * n), 0.0), dt)
    res_b = equivariance_error(step, batch, boost, loss)
    change = loss.per_sample(boost[1](batch[1]), boost[1].at_time(0.0)(batch[0]))
    assert res_b.defect[0].max() == 0
    assert 0 < res_b.defect[1, 2] < 1e-2 * change[2]  # measured: 1.2e-3 * change


def test_save_load_roundtrip_and_summary(rng, tmp_path):
    b = torch.randn(4, 8, 8, generator=rng, dtype=torch.float64)
    res = equivariance_error(AddField(b), transitions(6, 8, rng), Dihedral4(EULER), SMSE(RMS))
    path = res.save(tmp_path / "sub" / "eq.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["eq.pt"]  # no temporary left
    back = EquivarianceResult.load(path)
    assert back.elements == res.elements and back.group["name"] == "D4"
    assert back.settings == res.settings
    assert torch.equal(back.error, res.error) and torch.equal(back.defect, res.defect)
    s = back.summary()
    assert list(s) == res.elements
    torch.testing.assert_close(
        torch.tensor(s["r"]["defect"]["median"], dtype=torch.float64), res.defect[1].median()
    )
    assert s["r"]["error"]["q25"] <= s["r"]["error"]["median"] <= s["r"]["error"]["q75"]
    assert back.index("r3") == 3
    with pytest.raises(KeyError, match="no group element"):
        back.index("x")


def test_bad_files_and_bad_input(rng, tmp_path):
    with pytest.raises(EquivarianceFileError, match="no equivariance result"):
        EquivarianceResult.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(EquivarianceFileError, match="not a readable"):
        EquivarianceResult.load(junk)
    torch.save({"meta": '{"format": "other"}'}, tmp_path / "other.pt")
    with pytest.raises(EquivarianceFileError, match="unknown format"):
        EquivarianceResult.load(tmp_path / "other.pt")

    loss, d4 = SMSE(RMS), Dihedral4(EULER)
    x_t, x_t1 = transitions(2, 8, rng)
    with pytest.raises(LayoutError, match="differs"):
        equivariance_error(nn.Identity(), (x_t, x_t1), d4, loss, layout=FieldLayout([Channel("a")]))
    three = FieldLayout([Channel("rho"), Channel("u", "v", "x"), Channel("w", "v", "y")])
    with pytest.raises(LayoutError, match="channels"):
        equivariance_error(nn.Identity(), (x_t[:, :3], x_t1[:, :3]), Dihedral4(three), loss)
    with pytest.raises(LayoutError, match="square"):
        equivariance_error(nn.Identity(), (x_t[..., :6], x_t1[..., :6]), d4, loss)
    bad = x_t.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        equivariance_error(nn.Identity(), (bad, x_t1), d4, loss)
    with pytest.raises(ValueError, match="same shape"):
        equivariance_error(nn.Conv2d(4, 2, 1).double(), (x_t, x_t1), d4, loss)
    with pytest.raises(TypeError, match="Group"):
        equivariance_error(nn.Identity(), (x_t, x_t1), list(d4), loss)


def test_control_gcnn_is_exactly_equivariant_and_unet_is_not(rng):
    """The audit's own control experiment on the project's presets: the p4m G-CNN has zero
    defect (round-off) for D4 x every shift; the UNet breaks rotations."""
    from symaudit import models

    x = 0.5 + torch.rand(3, 4, 16, 16, generator=rng, dtype=torch.float64)
    batch = (x, x + 0.01 * torch.randn(x.shape, generator=rng, dtype=torch.float64))
    loss = SMSE(torch.ones(4, dtype=torch.float64))
    group = Dihedral4(EULER) * Translations(EULER, "xy", [0, 3], size=16)
    for name in ("gcnn-tiny", "unet-tiny"):
        torch.manual_seed(0)
        model = models.build(name).double()
        with torch.no_grad():
            change = loss(model(x), x)  # how far the model moves its input
        res = equivariance_error(model, batch, group, loss)
        if name == "gcnn-tiny":
            assert res.defect.max() < 1e-20 * change  # measured ~1e-28 * change
        else:
            assert res.defect[group.names.index("r")].min() > 1e-3 * change
