"""Group machinery: D4 convention, vector action, group laws, translations, boosts, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from symaudit import SMSE, Channel, FieldLayout, LayoutError
from symaudit.data.stats import channel_rms
from symaudit.groups import (
    Dihedral4,
    GalileanBoost,
    GroupElement,
    GroupError,
    Translations,
    UnknownElementError,
    from_spec,
    product,
)

EULER = FieldLayout.euler()
# phi, then a vector (its gradient in the tests), then another scalar
GRAD = FieldLayout([Channel("phi"), Channel("gx", "g", "x"), Channel("gy", "g", "y")])


def centred_grad(phi: torch.Tensor) -> torch.Tensor:
    """Periodic centred differences of (..., H, W) -> (..., 2, H, W) as (d/dx, d/dy), h = 1."""
    dx = (phi.roll(-1, -1) - phi.roll(1, -1)) / 2
    dy = (phi.roll(-1, -2) - phi.roll(1, -2)) / 2
    return torch.stack([dx, dy], dim=-3)


def random_euler(n: int, size: int, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    rho = 1 + torch.rand(n, size, size, generator=gen, dtype=dtype)
    m = torch.randn(n, 2, size, size, generator=gen, dtype=dtype)
    e = 3 + torch.rand(n, size, size, generator=gen, dtype=dtype)
    return torch.cat([rho[:, None], m, e[:, None]], dim=1)


# -- D4: convention pinned against explicit formulas --------------------------------------------
def test_d4_order_names_and_grid_formulas(rng):
    d4 = Dihedral4(EULER)
    assert [g.name for g in d4] == ["e", "r", "r2", "r3", "s", "rs", "r2s", "r3s"]
    assert len(d4) == 8
    x = torch.randn(2, 4, 5, 5, generator=rng, dtype=torch.float64)
    n = 5
    r, s = d4["r"](x), d4["s"](x)
    for j in range(n):
        for i in range(n):
            # r: CCW about the centre; the source of (X, Y) is (Y, -X): out[j, i] = in[N-1-i, j]
            assert r[:, 0, j, i].equal(x[:, 0, n - 1 - i, j])
            assert r[:, 1, j, i].equal(-x[:, 2, n - 1 - i, j])  # m_x' = -m_y
            assert r[:, 2, j, i].equal(x[:, 1, n - 1 - i, j])  # m_y' = m_x
            # s: x -> -x, negating m_x
            assert s[:, 0, j, i].equal(x[:, 0, j, n - 1 - i])
            assert s[:, 1, j, i].equal(-x[:, 1, j, n - 1 - i])
            assert s[:, 2, j, i].equal(x[:, 2, j, n - 1 - i])


def test_r_is_counter_clockwise():
    # a density bump right of centre (X > 0, Y = 0) goes above it (Y > 0: larger row index),
    # and a uniform momentum along +x turns to +y
    n = 8
    x = torch.zeros(1, 4, n, n)
    x[0, 0, 4, 7] = 1.0  # row 4 = y just above centre; column 7 = far right
    x[0, 1] = 1.0
    y = Dihedral4(EULER)["r"](x)
    j, i = divmod(int(y[0, 0].argmax()), n)
    assert (j, i) == (7, 3)  # X' = -Y = -(4.5 - 4) -> column 3; Y' = X = 3.5 -> row 7
    assert y[0, 1].abs().max() == 0 and (y[0, 2] == 1).all()


def test_d4_cayley_table_is_dihedral():
    d4 = Dihedral4(EULER)
    e, r, s = d4["e"], d4["r"], d4["s"]
    assert r**4 == e and r**2 != e and s * s == e and s != e
    assert s * r * s == r.inverse()
    for k in range(4):
        assert d4[["e", "r", "r2", "r3"][k]] == r**k
        assert d4[["s", "rs", "r2s", "r3s"][k]] == r**k * s
    table = d4.multiplication_table()
    assert (table >= 0).all() and d4.is_group()
    perm = torch.arange(8)
    assert all((row.sort().values == perm).all() for row in table)  # Latin square
    assert all((col.sort().values == perm).all() for col in table.T)
    assert d4.rotations().names == ("e", "r", "r2", "r3")
    assert not (table == table.T).all()  # non-abelian


def test_gradient_commutes_with_every_d4_element(rng):
    """g(grad phi) == grad(g phi): pins the vector-component transform to the grid action."""
    phi = torch.randn(3, 12, 12, generator=rng, dtype=torch.float64)
    field = torch.cat([phi[:, None], centred_grad(phi)], dim=1)
    for g in Dihedral4(GRAD):
        gphi = g(field)[:, 0]
        expect = torch.cat([gphi[:, None], centred_grad(gphi)], dim=1)
        torch.testing.assert_close(g(field), expect, rtol=0, atol=0)
    # the test can fail: the scalar-only (wrong) action breaks it
    wrong = FieldLayout([Channel("phi"), Channel("gx"), Channel("gy")])
    r = Dihedral4(wrong)["r"]
    gphi = r(field)[:, 0]
    assert not torch.allclose(r(field)[:, 1:], centred_grad(gphi))


@pytest.mark.parametrize("n", [8, 9])
def test_solid_body_rotation_invariant_under_rotations(n):
    # cell centres (i + 1/2)/N; centre of the periodic cell-centred grid at 1/2 (a cell corner
    # for even N, the middle cell's centre for odd N) -- the point D4 acts about
    # (2i + 1 - N) / 2N: exactly antisymmetric in floating point, unlike (i + 1/2)/N - 1/2
    c = (2 * torch.arange(n, dtype=torch.float64) + 1 - n) / (2 * n)
    y, x = torch.meshgrid(c, c, indexing="ij")
    omega = 1.7
    v = torch.stack([torch.ones_like(x), -omega * y, omega * x, x * x + y * y])[None]
    d4 = Dihedral4(EULER)
    for name in ["e", "r", "r2", "r3"]:
        torch.testing.assert_close(d4[name](v), v, rtol=0, atol=0)
    # reflections reverse the sense of rotation: v -> -v (a pseudo-scalar vorticity)
    for name in ["s", "rs", "r2s", "r3s"]:
        torch.testing.assert_close(d4[name](v)[:, 1:3], -v[:, 1:3], rtol=0, atol=0)


def test_smse_is_d4_invariant_with_shared_vector_scale(rng):
    x = random_euler(4, 8, rng) * torch.tensor([1.0, 3.0, 0.5, 2.0]).view(4, 1, 1)
    pred = x + 0.3 * torch.randn(x.shape, generator=rng, dtype=torch.float64)
    loss = SMSE(channel_rms(x, EULER))
    for g in Dihedral4(EULER):
        # the same nonnegative terms summed in another order: relative error <= gamma_n,
        # n = x.numel() (Higham, Accuracy and Stability, 4.2)
        tol = x.numel() * torch.finfo(torch.float64).eps
        torch.testing.assert_close(loss(g(pred), g(x)), loss(pred, x), rtol=tol, atol=0)
    # separate scales for m_x and m_y would break it (the test can fail)
    biased = SMSE(torch.tensor([1.0, 1.0, 10.0, 1.0]))
    r = Dihedral4(EULER)["r"]
    assert not torch.isclose(biased(r(pred), r(x)), biased(pred, x), rtol=1e-3)


# -- group laws on random fields ------------------------------------------------------------------
N = 8
DT = 0.25
C = (0.5, -1.0)  # c dt N = (1, -2) cells; stays whole after D4 mixes the components

element_st = st.builds(
    lambda k, m, sx, sy, b: GroupElement(
        EULER,
        rot=k,
        flip=m,
        shift=(sx, sy),
        velocity=(b * C[0], b * C[1]),
        time=DT,
        period=N if (sx + sy) % 2 else None,  # mix elements in Z^2 and in Z_N^2
    ),
    st.integers(0, 3),
    st.booleans(),
    st.integers(-20, 20),
    st.integers(-20, 20),
    st.integers(-2, 2),
)


@settings(max_examples=60, deadline=None)
@given(g=element_st, h=element_st, k=element_st, seed=st.integers(0, 2**16))
def test_group_laws_on_random_fields(g, h, k, seed):
    x = random_euler(2, N, torch.Generator().manual_seed(seed))
    e = g * g.inverse()
    assert e.is_identity and e.name == "e"
    assert (g.inverse() * g).is_identity
    torch.testing.assert_close(e(x), x, rtol=0, atol=0)
    torch.testing.assert_close((g * h)(x), g(h(x)))  # the action is a homomorphism
    assert (g * h) * k == g * (h * k)
    torch.testing.assert_close(((g * h) * k)(x), g(h(k(x))))
    torch.testing.assert_close(g.inverse()(g(x)), x)


def test_products_translations_and_subgroups_close():
    d4 = Dihedral4(EULER)
    shifts = Translations(EULER, "xy", range(0, N, 4), size=N)
    assert len(shifts) == 4 and shifts.is_group()
    p4m = d4 * shifts
    assert len(p4m) == 32 and p4m.is_group()
    assert p4m["r*tx4"] == d4["r"] * shifts["tx4"]
    # x-shifts alone are not normalised by r: the product set is not closed
    assert not product(d4, Translations(EULER, "x", range(0, N, 4), size=N)).is_closed()
    # without a period, shifts live in Z: a finite subset is never closed
    assert not Translations(EULER, "x", range(0, N, 4)).is_closed()
    assert Translations(EULER, "x", range(0, N, 2), size=N).is_group()
    with pytest.raises(GroupError, match="not a subgroup"):
        d4.subgroup(["e", "r"])
    assert d4.subgroup(["e", "s"]).is_group()
    boosts = GalileanBoost(EULER, C, DT, multiples=range(-1, 2))
    assert not boosts.is_closed()  # velocities -c, 0, c: 2c is outside
    assert (boosts["boost(0.5,-1)"] ** 2).velocity == (1.0, -2.0)


def test_translation_direction_and_any_batch_shape(rng):
    t = Translations(EULER, "x", [0, 3, -2])
    assert t.names == ("e", "tx3", "tx-2")
    x = torch.randn(2, 3, 4, 6, 7, generator=rng)  # extra batch dims, non-square grid
    y = t["tx3"](x)
    assert y[..., :, 3:].equal(x[..., :, :-3])  # moved towards +x
    ty = Translations(EULER, "y", [1])["ty1"]
    assert ty(x)[..., 1:, :].equal(x[..., :-1, :])
    single = x[0, 0]
    assert t["tx3"](single).equal(y[0, 0])


def test_boost_matches_explicit_formula(rng):
    n, dt, c = 16, 0.125, (0.5, -0.25)  # c dt N = (1, -0.5) cells -> invalid at N=16
    x = random_euler(2, n, rng)
    with pytest.raises(GroupError, match="whole number of cells"):
        GalileanBoost(EULER, c, dt)[1](x)
    c = (0.5, -1.0)  # (1, -2) cells
    g = GalileanBoost(EULER, c, dt)[1]
    shifted = torch.roll(x, shifts=(-2, 1), dims=(-2, -1))  # U(x - c t)
    rho, mx, my, e = shifted.unbind(1)
    expect = torch.stack(
        [
            rho,
            mx + rho * c[0],
            my + rho * c[1],
            e + c[0] * mx + c[1] * my + 0.5 * rho * (c[0] ** 2 + c[1] ** 2),
        ],
        dim=1,
    )
    torch.testing.assert_close(g(x), expect, rtol=1e-14, atol=1e-14)
    # at t = 0: the pure kick, no shift; velocity u = m / rho increases by exactly c
    u0 = g.at_time(0.0)(x)
    torch.testing.assert_close(u0[:, 1] / u0[:, 0], x[:, 1] / x[:, 0] + c[0])

    # internal energy E - |m|^2 / (2 rho) is invariant (pressure is frame independent)
    def eint(s):
        return s[:, 3] - (s[:, 1] ** 2 + s[:, 2] ** 2) / (2 * s[:, 0])

    torch.testing.assert_close(eint(u0), eint(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_actions_keep_dtype_and_are_differentiable(dtype, rng):
    g = Dihedral4(EULER)["r3s"] * Translations(EULER, "xy", [2])["t(2,2)"]
    boost = GalileanBoost(EULER, (1.0, 0.0), 0.125)[1]
    x = random_euler(2, 8, rng).to(dtype).requires_grad_(True)
    for h in (g, boost, g * boost):
        y = h(x)
        assert y.dtype == dtype and y.shape == x.shape and x.grad is None
        (y * y).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        x.grad = None
    xd = random_euler(1, 8, rng).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: (g * boost)(t), (xd,))


# -- bad input ------------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors():
    d4 = Dihedral4(EULER)
    with pytest.raises(LayoutError, match="square grid"):
        d4["r"](torch.zeros(1, 4, 6, 8))
    assert d4["s"](torch.zeros(1, 4, 6, 8)).shape == (1, 4, 6, 8)  # reflections need no square
    with pytest.raises(LayoutError, match="3 channels"):
        d4["s"](torch.zeros(1, 3, 8, 8))
    with pytest.raises(UnknownElementError, match=r"no element 'r4'.*e, r, r2, r3, s, rs"):
        d4["r4"]
    with pytest.raises(KeyError):
        d4["r4"]
    with pytest.raises(LayoutError, match="Galilean boost needs conservative Euler"):
        GalileanBoost(GRAD, (1.0, 0.0), 0.1)
    with pytest.raises(GroupError, match="non-integer shifts"):
        Translations(EULER, "x", [1.5])
    with pytest.raises(GroupError, match="axis"):
        Translations(EULER, "z", [1])
    with pytest.raises(GroupError, match="different layouts"):
        d4["r"] * Dihedral4(GRAD)["r"]
    with pytest.raises(GroupError, match="different periodic grids"):
        Translations(EULER, "x", [1], size=8)[0] * Translations(EULER, "x", [1], size=16)[0]
    with pytest.raises(LayoutError, match="8x8"):
        Translations(EULER, "x", [1], size=8)[0](torch.zeros(1, 4, 16, 16))
    with pytest.raises(GroupError, match="different times"):
        GalileanBoost(EULER, C, 0.1)[1] * GalileanBoost(EULER, C, 0.2)[1]
    with pytest.raises(GroupError, match="more than once"):
        Translations(EULER, "x", [0, 8], size=8)


def test_from_spec():
    d4 = from_spec("d4", EULER)
    assert d4.names == Dihedral4(EULER).names
    t = from_spec("shift-x:8", EULER, resolution=32)
    assert t.names == ("e", "tx8", "tx16", "tx24") and t.is_group()
    assert len(from_spec("shift-y", EULER, resolution=(4, 4))) == 4
    assert from_spec("d4*shift-xy:16", EULER, resolution=32).is_group()
    assert from_spec("boost:0.5,0", EULER, dt=0.25).names == ("e", "boost(0.5,0)")
    assert from_spec("c4", EULER).names == ("e", "r", "r2", "r3")
    for bad, match in [
        ("d5", "unknown group spec"),
        ("shift-x:7", "divide"),
        ("shift-x:a", "integer"),
        ("boost:1", "boost:CX,CY"),
        ("d4**d4", "empty"),
    ]:
        with pytest.raises(GroupError, match=match):
            from_spec(bad, EULER, resolution=32, dt=0.1)
    with pytest.raises(GroupError, match="resolution"):
        from_spec("shift-x", EULER)
    with pytest.raises(GroupError, match="dt"):
        from_spec("boost:1,0", EULER)


def test_element_equality_and_names():
    t = Translations(EULER, "x", range(8), size=8)
    assert t["tx3"].inverse().name == "tx5"
    assert GroupElement(EULER, shift=(11, 0), period=8) == t["tx3"]
    assert GroupElement(EULER, shift=(11, 0)) != GroupElement(EULER, shift=(3, 0))
    assert Dihedral4(EULER)["r"] == (Dihedral4(EULER) * t)["r"]
    b = GalileanBoost(EULER, (0.1, 0.0), 10.0, multiples=range(4))
    assert b[1] * b[2] == b[3] and math.isclose(b[3].velocity[0], 0.3)
    assert len({g for g in Dihedral4(EULER)}) == 8
    # an element of Z (no period) is not the element of Z_8 with a congruent shift
    assert GroupElement(EULER, shift=(11, 0)) != t["tx3"]
    assert GroupElement(EULER, shift=(3, 0)) == t["tx3"]


def test_actions_never_touch_the_cpu_when_given_another_device():
    # meta tensors carry no data: any tensor made on the CPU inside an action would fail here
    x = torch.empty(2, 4, 8, 8, device="meta", dtype=torch.float32)
    group = Dihedral4(EULER) * Translations(EULER, "xy", [0, 3], size=8)
    boost = GalileanBoost(EULER, (0.5, 0.0), 0.25)[1]
    for g in [*group, boost, boost.at_time(0.0)]:
        y = g(x)
        assert y.device.type == "meta" and y.shape == x.shape and y.dtype == torch.float32


def test_orbit_stacks_images(rng):
    x = torch.randn(2, 4, 6, 6, generator=rng)
    d4 = Dihedral4(EULER)
    orbit = d4.orbit(x)
    assert orbit.shape == (8, 2, 4, 6, 6)
    for i, g in enumerate(d4):
        assert orbit[i].equal(g(x))
