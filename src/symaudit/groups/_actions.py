"""Tensor-level actions on `(..., C, H, W)` fields: D4 about the domain centre, periodic
shifts, and the Galilean velocity kick. Pure torch ops (flip, rot90, roll, index_select,
arithmetic), so they run on any device and dtype, differentiably, never in place.

Grid convention: axis -1 is x (column index i), axis -2 is y (row index j), y increasing with
j; cell centres sit at X = i + 1/2 - N/2 (in cells) relative to the domain centre. A rotation
about the centre then maps cell centres to cell centres, so every action is an exact
permutation of pixels: no interpolation.
"""

from __future__ import annotations

import torch

from symaudit.fields import FieldLayout, LayoutError

__all__ = [
    "Matrix",
    "apply_d4",
    "d4_compose",
    "d4_inverse",
    "d4_matrix",
    "euler_channels",
    "galilean_kick",
    "mat_vec",
    "translate",
]

# A 2x2 matrix (a, b, c, d) = [[a, b], [c, d]] acting on (x, y) column vectors.
Matrix = tuple[int, int, int, int]

_R: Matrix = (0, -1, 1, 0)  # counter-clockwise pi/2: (x, y) -> (-y, x)
_S: Matrix = (-1, 0, 0, 1)  # reflection about the vertical axis: (x, y) -> (-x, y)
_I: Matrix = (1, 0, 0, 1)


def _mat_mul(p: Matrix, q: Matrix) -> Matrix:
    a, b, c, d = p
    e, f, g, h = q
    return (a * e + b * g, a * f + b * h, c * e + d * g, c * f + d * h)


def d4_matrix(rot: int, flip: bool) -> Matrix:
    """Matrix of r^rot s^flip (s applied first)."""
    m = _S if flip else _I
    for _ in range(rot % 4):
        m = _mat_mul(_R, m)
    return m


def d4_compose(a: tuple[int, bool], b: tuple[int, bool]) -> tuple[int, bool]:
    """(r^k1 s^m1)(r^k2 s^m2) = r^(k1 + (-1)^m1 k2) s^(m1 xor m2), since s r = r^-1 s."""
    (k1, m1), (k2, m2) = a, b
    return ((k1 - k2 if m1 else k1 + k2) % 4, m1 != m2)


def d4_inverse(a: tuple[int, bool]) -> tuple[int, bool]:
    """Rotations invert to r^-k; every r^k s is its own inverse."""
    k, m = a
    return (k, True) if m else ((-k) % 4, False)


def mat_vec(m: Matrix, v: tuple) -> tuple:
    a, b, c, d = m
    return (a * v[0] + b * v[1], c * v[0] + d * v[1])


def _component_map(layout: FieldLayout, m: Matrix) -> tuple[list[int], list[float]]:
    """v' = m v as a signed channel permutation (D4 matrices have one +-1 per row)."""
    perm = list(range(layout.num_channels))
    sign = [1.0] * layout.num_channels
    a, b, c, d = m
    for ix, iy in layout.vectors.values():
        perm[ix], sign[ix] = (ix, float(a)) if a else (iy, float(b))
        perm[iy], sign[iy] = (ix, float(c)) if c else (iy, float(d))
    return perm, sign


def apply_d4(x: torch.Tensor, layout: FieldLayout, rot: int, flip: bool) -> torch.Tensor:
    """Act with g = r^rot s^flip on fields ``x`` `(..., C, H, W)`: (g v)(p) = A v(A^-1 p).

    For r (counter-clockwise about the centre) the source of output pixel (j, i) is
    A^-1 (X, Y) = (Y, -X), i.e. ``out[j, i] = in[N-1-i, j]`` = ``rot90(in, 1, dims=(-1, -2))``.
    For s, ``out[j, i] = in[j, N-1-i]`` = ``flip(-1)``. Vector components are then mixed by A.
    """
    rot %= 4
    if rot % 2 and x.shape[-1] != x.shape[-2]:
        raise LayoutError(
            f"a pi/2 rotation needs a square grid, got H x W = {x.shape[-2]} x {x.shape[-1]}"
        )
    if flip:
        x = x.flip(-1)
    if rot:
        x = torch.rot90(x, rot, dims=(-1, -2))
    perm, sign = _component_map(layout, d4_matrix(rot, flip))
    if perm != list(range(len(perm))):
        x = x.index_select(-3, torch.tensor(perm, device=x.device))
    if any(s < 0 for s in sign):
        x = x * torch.tensor(sign, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x


def translate(x: torch.Tensor, sx: int, sy: int) -> torch.Tensor:
    """Periodic shift by (sx, sy) cells: ``out[j, i] = in[j - sy, i - sx]`` (the field moves
    towards +x, +y). Shifts only relabel points, so every layout transforms alike."""
    if sx == 0 and sy == 0:
        return x
    return torch.roll(x, shifts=(sy, sx), dims=(-2, -1))


def euler_channels(layout: FieldLayout) -> tuple[int, int, int, int]:
    """Indices (rho, m_x, m_y, E) of a conservative Euler layout; `LayoutError` otherwise."""
    names = set(layout.names)
    vectors = layout.vectors
    if layout.num_channels != 4 or not {"rho", "E"} <= names or "momentum" not in vectors:
        raise LayoutError(
            "a Galilean boost needs conservative Euler variables: scalars 'rho' and 'E' and the "
            f"vector 'momentum' (FieldLayout.euler()), got {layout!r}"
        )
    mx, my = vectors["momentum"]
    return layout.index("rho"), mx, my, layout.index("E")


def galilean_kick(
    x: torch.Tensor, layout: FieldLayout, velocity: tuple[float, float]
) -> torch.Tensor:
    """Add velocity c to every fluid element, in place of position (no shift):
    rho' = rho, m' = m + rho c, E' = E + c.m + 1/2 rho |c|^2 (m the un-kicked momentum)."""
    irho, imx, imy, ie = euler_channels(layout)
    cx, cy = velocity
    ch = list(x.unbind(-3))
    rho, mx, my, e = ch[irho], ch[imx], ch[imy], ch[ie]
    ch[imx] = mx + cx * rho
    ch[imy] = my + cy * rho
    ch[ie] = e + (cx * mx + cy * my) + (0.5 * (cx * cx + cy * cy)) * rho
    return torch.stack(ch, dim=-3)
