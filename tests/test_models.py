"""Emulator architectures: sizes, exact symmetries where the architecture guarantees them,
forward-mode AD, and input validation."""

import copy

import pytest
import torch
from torch.func import functional_call, jvp

from symaudit import FieldLayout, models
from symaudit.groups import Dihedral4, Translations

LAYOUT = FieldLayout.euler()


def _randomise(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Perturb every parameter so no layer sits at a symmetric initial value (zero biases,
    unit norms, small heads) that could hide a broken weight-sharing pattern."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def test_paper_presets_match_the_paper_sizes():
    # counted at construction, no forward pass (the ViT is built for 128²)
    unet = models.num_parameters(models.build("unet-paper"))
    vit = models.num_parameters(models.build("vit-paper"))
    assert abs(unet - 13e6) <= 0.1 * 13e6, unet
    assert abs(vit - 5e6) <= 0.1 * 5e6, vit
    assert models.build("vit-paper").position.shape == (1, 256, 256)  # 16×16 patches of 8


@pytest.mark.parametrize("name", ["unet-small", "vit-small", "gcnn-small"])
def test_small_presets_are_cpu_sized(name):
    assert 0.08e6 <= models.num_parameters(models.build(name)) <= 0.5e6


@pytest.mark.parametrize("name", ["unet-tiny", "vit-tiny", "gcnn-tiny"])
def test_tiny_presets_fit_dense_oracles_and_run_in_float64(name):
    model = models.build(name).double()
    assert models.num_parameters(model) <= 5000
    x = torch.randn(3, 4, 16, 16, dtype=torch.float64)
    y = model(x)
    assert y.shape == x.shape and y.dtype == torch.float64 and torch.isfinite(y).all()
    # a rebuilt model from the stored config has the same structure
    clone = models.build_from_config(model.symaudit_config)
    assert [p.shape for p in clone.parameters()] == [p.shape for p in model.parameters()]


def test_unet_is_shift_equivariant_for_multiples_of_its_stride_only():
    model = _randomise(models.build("unet-tiny", residual=False)).double()
    x = torch.randn(2, 4, 32, 32, dtype=torch.float64)
    y = model(x)
    scale = y.abs().max()
    for dy, dx in [(16, 0), (0, 16), (16, 16)]:
        shifted = model(torch.roll(x, (dy, dx), dims=(-2, -1)))
        err = (shifted - torch.roll(y, (dy, dx), dims=(-2, -1))).abs().max() / scale
        assert err < 1e-12, (dy, dx, err)
    # a shift by one cell is not a multiple of the stride: the test can fail
    err1 = (model(torch.roll(x, 1, dims=-1)) - torch.roll(y, 1, dims=-1)).abs().max() / scale
    assert err1 > 1e-4


def _gcnn(dtype=torch.float32):
    return _randomise(models.build("gcnn-tiny", residual=False)).to(dtype)


def test_gcnn_is_exactly_d4_equivariant_in_float32():
    """Exact in float64 up to its round-off; in float32 the defect is nothing but round-off.
    f32(gx) - g f32(x) = [f32(gx) - f64(gx)] + [f64(gx) - g f64(x)] + g[f64(x) - f32(x)], so
    the float32 defect is bounded by the float32 forward error on gx and on x plus the float64
    defect: a tolerance from the model's own rounding, not from one machine's kernels (a
    fixed 2e-6 was 1.4x above one machine's 1.5e-6)."""
    model = _gcnn()
    m64 = copy.deepcopy(model).double()  # the same weights, exactly
    x = torch.randn(2, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y, y64 = model(x), m64(x.double())
        scale = float(y64.abs().max())
        assert scale > 0.1  # a non-trivial output (not just a vanishing head)
        fwd = float((y.double() - y64).abs().max())  # float32 forward error on x
        for g in Dihedral4(LAYOUT):
            gx = g(x)
            d64 = float((m64(gx.double()) - g(y64)).abs().max())
            assert d64 <= 1e3 * torch.finfo(torch.float64).eps * scale, (g.name, d64)
            fwd_g = float((model(gx).double() - m64(gx.double())).abs().max())
            err = float((model(gx) - g(y)).abs().max())
            assert err <= fwd + fwd_g + d64, (g.name, err, fwd, fwd_g)
            # and that round-off is float32's: a few hundred eps32 of the output scale
            assert fwd_g <= 1e3 * torch.finfo(torch.float32).eps * scale, (g.name, fwd_g)


def test_gcnn_equivariance_test_detects_broken_weight_sharing():
    model = _gcnn(torch.float64)
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    r = Dihedral4(LAYOUT)["r"]
    conv = model.convs_in
    conv.index = conv.index[[0, 3, 2, 1, 4, 5, 6, 7]]  # rotate the kernels the wrong way
    err = (model(r(x)) - r(model(x))).abs().max() / model(x).abs().max()
    assert err > 1e-3


def test_gcnn_momentum_is_lifted_as_a_vector_not_as_scalars():
    # only m_x nonzero: a quarter turn must move it into m_y (escnn-style conventions are
    # easy to get wrong here, so check against the independent action directly)
    model = _gcnn(torch.float64)
    x = torch.zeros(1, 4, 8, 8, dtype=torch.float64)
    x[:, 1] = torch.randn(8, 8, dtype=torch.float64)
    rx = torch.rot90(x, 1, dims=(-1, -2))
    rx = torch.stack([rx[:, 0], -rx[:, 2], rx[:, 1], rx[:, 3]], dim=1)  # (m_x, m_y) -> (-m_y, m_x)
    y = model(x)
    ry = torch.rot90(y, 1, dims=(-1, -2))
    ry = torch.stack([ry[:, 0], -ry[:, 2], ry[:, 1], ry[:, 3]], dim=1)
    torch.testing.assert_close(model(rx), ry, rtol=0, atol=1e-12 * y.abs().max().item())


def test_gcnn_is_equivariant_to_every_periodic_shift_and_exports_exactly():
    model = _gcnn()
    n = 8
    x = torch.randn(1, 4, n, n)
    y = model(x)
    shifts = Translations(LAYOUT, axis="x", shifts=range(n))
    xs = torch.cat([torch.roll(t(x), dy, dims=-2) for dy in range(n) for t in shifts])
    ys = torch.cat([torch.roll(t(y), dy, dims=-2) for dy in range(n) for t in shifts])
    err = (model(xs) - ys).abs().max() / y.abs().max()
    assert err < 2e-6, err.item()
    exported = model.export()
    assert not any(isinstance(m, models.GroupConv2d) for m in exported.modules())
    torch.testing.assert_close(exported(x), y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["vit-tiny", "unet-tiny", "gcnn-tiny"])
def test_forward_mode_jvp_matches_finite_differences(name):
    # the influence engine applies J v with torch.func.jvp; fused attention kernels would fail
    model = _randomise(models.build(name), scale=0.1).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    tangent = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}

    def f(p):
        return functional_call(model, p, (x,))

    _, jv = jvp(f, (params,), (tangent,))
    eps = 1e-6
    plus = f({k: v + eps * tangent[k] for k, v in params.items()})
    minus = f({k: v - eps * tangent[k] for k, v in params.items()})
    fd = (plus - minus) / (2 * eps)
    torch.testing.assert_close(jv, fd, rtol=1e-6, atol=1e-7 * fd.abs().max().item())


def test_bad_inputs_and_names_give_clear_errors():
    with pytest.raises(KeyError, match="unknown model preset 'unet-huge'"):
        models.build("unet-huge")
    with pytest.raises(ValueError, match="bad arguments for unet"):
        models.build("unet-tiny", colour="blue")
    unet = models.build("unet-tiny")
    with pytest.raises(ValueError, match="divisible by 16"):
        unet(torch.zeros(1, 4, 24, 24))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        unet(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="built for 16x16"):
        models.build("vit-tiny")(torch.zeros(1, 4, 32, 32))
