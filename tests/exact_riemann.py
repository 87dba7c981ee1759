"""Exact solution of the 1D Riemann problem for the ideal-gas Euler equations (Toro, ch. 4).

Used as the test oracle for the finite-volume solver. NumPy, float64. The star pressure solves
f_L(p) + f_R(p) + (u_R - u_L) = 0 by Newton's method (Toro 4.5-4.9) from the PVRS guess; the
solution is then sampled on rays x/t (Toro 4.4-4.5, Fig. 4.14). Vacuum-generating data raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class State:
    """Primitive 1D state: density, velocity, pressure."""

    rho: float
    u: float
    p: float


def _f(p: float, s: State, gamma: float) -> tuple[float, float]:
    """Toro's f_K(p) and its derivative: shock (p > p_K) or rarefaction branch."""
    c = math.sqrt(gamma * s.p / s.rho)
    if p > s.p:
        a = 2.0 / ((gamma + 1.0) * s.rho)
        b = (gamma - 1.0) / (gamma + 1.0) * s.p
        q = math.sqrt(a / (p + b))
        return (p - s.p) * q, q * (1.0 - 0.5 * (p - s.p) / (b + p))
    ratio = p / s.p
    f = 2.0 * c / (gamma - 1.0) * (ratio ** ((gamma - 1.0) / (2.0 * gamma)) - 1.0)
    df = ratio ** (-(gamma + 1.0) / (2.0 * gamma)) / (s.rho * c)
    return f, df


def star_state(left: State, right: State, gamma: float = 1.4) -> tuple[float, float]:
    """(p*, u*) in the star region. Raises ValueError if the data generate vacuum."""
    cl = math.sqrt(gamma * left.p / left.rho)
    cr = math.sqrt(gamma * right.p / right.rho)
    du = right.u - left.u
    if 2.0 / (gamma - 1.0) * (cl + cr) <= du:
        raise ValueError("the initial data generate vacuum (pressure positivity condition)")
    # PVRS initial guess (Toro 4.47), floored to keep the Newton iteration in p > 0.
    p_pv = 0.5 * (left.p + right.p) - 0.125 * du * (left.rho + right.rho) * (cl + cr)
    p = max(1e-8 * min(left.p, right.p), p_pv)
    for _ in range(100):
        fl, dfl = _f(p, left, gamma)
        fr, dfr = _f(p, right, gamma)
        p_new = p - (fl + fr + du) / (dfl + dfr)
        p_new = max(p_new, 1e-14 * p)
        if abs(p_new - p) <= 1e-15 * 0.5 * (p_new + p):
            p = p_new
            break
        p = p_new
    else:
        raise RuntimeError("Newton iteration for the star pressure did not converge")
    fl, _ = _f(p, left, gamma)
    fr, _ = _f(p, right, gamma)
    return p, 0.5 * (left.u + right.u) + 0.5 * (fr - fl)


def _sample_side(s: State, p_star: float, u_star: float, xi: float, sign: float, gamma: float):
    """Solution on ray xi on the side of the contact where state `s` lives (sign -1 left, +1 right).

    Written for the left side; the right side is its mirror image (u -> -u, xi -> -xi).
    """
    u, us, xi = sign * -s.u, sign * -u_star, sign * -xi  # mirror the right side to the left
    c = math.sqrt(gamma * s.p / s.rho)
    g1, g2 = (gamma - 1.0) / (gamma + 1.0), (gamma - 1.0) / (2.0 * gamma)
    if p_star > s.p:  # shock
        shock = u - c * math.sqrt((gamma + 1.0) / (2.0 * gamma) * p_star / s.p + g2)
        if xi <= shock:
            return s.rho, sign * -u, s.p
        ratio = p_star / s.p
        rho = s.rho * (ratio + g1) / (g1 * ratio + 1.0)
        return rho, sign * -us, p_star
    c_star = c * (p_star / s.p) ** g2
    head, tail = u - c, us - c_star
    if xi <= head:
        return s.rho, sign * -u, s.p
    if xi >= tail:
        return s.rho * (p_star / s.p) ** (1.0 / gamma), sign * -us, p_star
    # inside the fan (Toro 4.56)
    k = 2.0 / (gamma + 1.0) + g1 / c * (u - xi)
    rho = s.rho * k ** (2.0 / (gamma - 1.0))
    vel = 2.0 / (gamma + 1.0) * (c + (gamma - 1.0) / 2.0 * u + xi)
    return rho, sign * -vel, s.p * k ** (2.0 * gamma / (gamma - 1.0))


def sample(
    left: State, right: State, xi: np.ndarray, gamma: float = 1.4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact (rho, u, p) on the rays xi = (x - x0) / t, each shaped like `xi`."""
    p_star, u_star = star_state(left, right, gamma)
    out = np.empty((3, *np.shape(xi)))
    for i, x in enumerate(np.asarray(xi, dtype=np.float64).flat):
        side = (left, -1.0) if x <= u_star else (right, 1.0)
        out[:, *np.unravel_index(i, np.shape(xi))] = _sample_side(
            side[0], p_star, u_star, float(x), side[1], gamma
        )
    return out[0], out[1], out[2]


def cell_averages(
    left: State,
    right: State,
    edges: np.ndarray,
    x0: float,
    t: float,
    gamma: float = 1.4,
    points: int = 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact (rho, u, p) averaged over the cells [edges[i], edges[i+1]] at time t > 0.

    Midpoint rule with `points` sub-points per cell: discontinuities inside a cell are then
    resolved to 1/points of the cell, far below the finite-volume errors measured against it.
    """
    frac = (np.arange(points) + 0.5) / points
    x = edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * frac[None, :]
    rho, u, p = sample(left, right, (x - x0) / t, gamma)
    return rho.mean(1), u.mean(1), p.mean(1)
