"""Batched second-order finite-volume solver for the 2D compressible Euler equations.

    d/dt (rho, m_x, m_y, E) + d/dx F(U) + d/dy G(U) = 0,   p = (gamma - 1) (E - |m|^2 / (2 rho))

on a periodic rectangle `domain = (Lx, Ly)` (default the unit square) discretised by the grid of
the state tensor `(B, 4, H, W)`: axis -1 is x (W cells of width Lx / W), axis -2 is y (H cells of
height Ly / H), row index increasing with y. Method: MUSCL reconstruction of the primitive
variables (rho, u, v, p) with a TVD limiter, HLLC fluxes with Einfeldt wave speeds, unsplit
(x and y fluxes from the same state), SSP-RK2 (Heun) in time. Each trajectory has its own
CFL step dt = cfl / max((|u| + c) / dx + (|v| + c) / dy), shortened to land exactly on each
output time, so a trajectory's result does not depend on the batch it shares.

Both sweeps use the same code with the roles of (x, m_x) and (y, m_y) exchanged, and the flux
mirrors bit-for-bit (see `_flux`), so on a square grid (dx = dy) the solver is exactly
equivariant under the eight rotations/reflections of the square and under periodic shifts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from symaudit.physics._flux import LIMITERS, Limiter, hllc, muscl_faces

__all__ = [
    "InvalidStateError",
    "SolverError",
    "block_average",
    "conservative_to_primitive",
    "evolve",
    "pressure",
    "primitive_to_conservative",
]


class InvalidStateError(ValueError):
    """The initial state or an argument of `evolve` is unusable (shape, NaN, rho <= 0, p <= 0)."""


class SolverError(RuntimeError):
    """A time step lost positivity (rho <= 0 or p <= 0) or produced NaN/inf.

    `trajectory` is the batch index and `time` the simulated time of the failing step.
    """

    def __init__(self, message: str, trajectory: int, time: float) -> None:
        super().__init__(message)
        self.trajectory = trajectory
        self.time = time


# ---------------------------------------------------------------------------------------------
# Variable conversions (channels on axis -3)


def pressure(state: Tensor, gamma: float = 1.4) -> Tensor:
    """Pressure `(..., H, W)` of a conservative state `(..., 4, H, W)`: (g-1)(E - |m|^2/2rho)."""
    rho, mx, my, energy = state.unbind(-3)
    return (gamma - 1.0) * (energy - 0.5 * (mx * mx + my * my) / rho)


def conservative_to_primitive(state: Tensor, gamma: float = 1.4) -> Tensor:
    """(rho, m_x, m_y, E) -> (rho, u, v, p), both `(..., 4, H, W)`."""
    rho, mx, my, _ = state.unbind(-3)
    return torch.stack((rho, mx / rho, my / rho, pressure(state, gamma)), dim=-3)


def primitive_to_conservative(prim: Tensor, gamma: float = 1.4) -> Tensor:
    """(rho, u, v, p) -> (rho, rho u, rho v, p/(gamma-1) + rho |u|^2 / 2), both `(..., 4, H, W)`."""
    rho, u, v, p = prim.unbind(-3)
    energy = p / (gamma - 1.0) + 0.5 * rho * (u * u + v * v)
    return torch.stack((rho, rho * u, rho * v, energy), dim=-3)


def block_average(x: Tensor, k: int) -> Tensor:
    """Conservative k x k block average `(..., H, W) -> (..., H/k, W/k)`.

    Each block's values are sorted and summed in pairs (smallest + largest, ...), so the
    result neither depends on the order of cells within a block nor loses exactness when
    the values are negated: block averaging commutes *exactly* with rotations/reflections of
    the grid (momentum components change sign) and with shifts by multiples of k.
    """
    if k == 1:
        return x
    *lead, h, w = x.shape
    if h % k or w % k:
        raise InvalidStateError(f"grid {h}x{w} is not divisible by the block size {k}")
    blocks = x.reshape(*lead, h // k, k, w // k, k).transpose(-3, -2)
    blocks = blocks.reshape(*lead, h // k, w // k, k * k)
    ordered = blocks.sort(dim=-1).values
    half = (k * k) // 2
    pairs = ordered[..., :half] + ordered[..., k * k - half :].flip(-1)
    total = pairs.sum(dim=-1)
    if k % 2:
        total = total + ordered[..., half]
    return total / (k * k)


# ---------------------------------------------------------------------------------------------
# The time step


def _rate(
    state: Tensor, dx: float, dy: float, gamma: float, limiter: Limiter
) -> tuple[Tensor, Tensor]:
    """(-(dF/dx + dG/dy), ok) for `state` (B, 4, H, W); ok (B,): rho > 0, p > 0, finite.

    Both sweeps call the same `_face_fluxes`; the y sweep sees the velocities in the order
    (normal, tangential) = (v, u), so rotations of the grid map one sweep onto the other.
    """
    rho, mx, my, energy = state.unbind(1)
    p = (gamma - 1.0) * (energy - 0.5 * (mx * mx + my * my) / rho)
    ok = ((rho > 0) & (p > 0) & torch.isfinite(p)).flatten(1).all(1)
    prim = torch.stack((rho, mx / rho, my / rho, p), dim=1)
    fx = _face_fluxes(prim, -1, gamma, limiter)
    fy = _face_fluxes(prim[:, _SWAP], -2, gamma, limiter)[:, _SWAP]
    w, h = prim.shape[-1], prim.shape[-2]
    div_x = (fx[..., 1:] - fx[..., :w]) / dx
    div_y = (fy[..., 1:, :] - fy[..., :h, :]) / dy
    return -(div_x + div_y), ok


_SWAP = [0, 2, 1, 3]  # (rho, m_x, m_y, E) <-> (rho, m_y, m_x, E)


def _face_fluxes(prim: Tensor, dim: int, gamma: float, limiter: Limiter) -> Tensor:
    """HLLC fluxes `(B, 4, ..., n+1, ...)` through the n+1 faces -1/2 .. n-1/2 along `dim`.

    `prim` is (rho, normal velocity, tangential velocity, p); the periodic grid is extended by
    two ghost cells per side so that every stencil is a contiguous slice (vectorises well).
    """
    n = prim.shape[dim]
    if n >= 2:
        ext = torch.cat((prim.narrow(dim, n - 2, 2), prim, prim.narrow(dim, 0, 2)), dim)
    else:  # a strip one cell wide (slices, not a gather: torch.compile builds gathers slowly)
        ext = torch.cat((prim,) * 5, dim)
    left, right = muscl_faces(ext, dim, limiter)
    return torch.stack(hllc(*left.unbind(1), *right.unbind(1), gamma), dim=1)


def _cfl_dt(state: Tensor, dx: float, dy: float, gamma: float, cfl: float) -> Tensor:
    """Per-trajectory CFL step `(B,)` in float64: cfl / max((|u| + c)/dx + (|v| + c)/dy)."""
    rho, mx, my, energy = state.unbind(1)
    u = mx / rho
    v = my / rho
    p = (gamma - 1.0) * (energy - 0.5 * (mx * mx + my * my) / rho)
    c = torch.sqrt(gamma * p / rho)
    speed = ((u.abs() + c) / dx + (v.abs() + c) / dy).flatten(1).amax(1)
    return cfl / speed.double()


def _step(
    state: Tensor,
    t: Tensor,
    target: Tensor,
    failed_at: Tensor,
    steps: Tensor,
    dx: float,
    dy: float,
    gamma: float,
    cfl: float,
    limiter: Limiter,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One SSP-RK2 step of every trajectory that has not reached `target` nor failed.

    `t`, `target`, `failed_at` are float64 `(B,)`; `failed_at` is NaN until a trajectory's
    state (at the start or the middle of a step) is invalid, then the time of that step.
    `steps` (B,) int64 counts the steps taken. Finished or failed trajectories are left
    bitwise unchanged.
    """
    dt_cfl = _cfl_dt(state, dx, dy, gamma, cfl)
    remaining = target - t
    lands = dt_cfl >= remaining
    dt64 = torch.where(lands, remaining, dt_cfl)
    dt = dt64.to(state.dtype)[:, None, None, None]
    rate0, ok0 = _rate(state, dx, dy, gamma, limiter)
    stage = state + dt * rate0
    rate1, ok1 = _rate(stage, dx, dy, gamma, limiter)
    new = 0.5 * state + 0.5 * (stage + dt * rate1)

    alive = torch.isnan(failed_at)
    active = alive & (remaining > 0)
    newly_failed = active & ~(ok0 & ok1)
    advance = active & ~newly_failed
    failed_at = torch.where(newly_failed, t, failed_at)
    state = torch.where(advance[:, None, None, None], new, state)
    t = torch.where(advance, torch.where(lands, target, t + dt64), t)
    return state, t, failed_at, steps + advance.long()


@functools.cache
def _compiled_step() -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]:
    return torch.compile(_step, fullgraph=True, dynamic=False)


# ---------------------------------------------------------------------------------------------
# Validation


def _check_state(state: Tensor, gamma: float) -> None:
    if not isinstance(state, Tensor):
        raise InvalidStateError(f"state must be a torch.Tensor, got {type(state).__name__}")
    if not state.is_floating_point():
        raise InvalidStateError(f"state must be a floating-point tensor, got {state.dtype}")
    if state.ndim != 4 or state.shape[1] != 4:
        raise InvalidStateError(
            f"state must have shape (B, 4, H, W) = (batch, [rho, m_x, m_y, E], y, x), "
            f"got {tuple(state.shape)}"
        )
    if state.shape[0] == 0 or state.shape[2] == 0 or state.shape[3] == 0:
        raise InvalidStateError(f"state has an empty dimension: {tuple(state.shape)}")
    bad = ~torch.isfinite(state).flatten(1).all(1)
    if bad.any():
        raise InvalidStateError(f"state has NaN or inf values in trajectories {_indices(bad)}")
    bad = ~(state[:, 0] > 0).flatten(1).all(1)
    if bad.any():
        raise InvalidStateError(f"density rho <= 0 in trajectories {_indices(bad)}")
    bad = ~(pressure(state, gamma) > 0).flatten(1).all(1)
    if bad.any():
        raise InvalidStateError(f"pressure p <= 0 in trajectories {_indices(bad)}")


def _indices(mask: Tensor, limit: int = 10) -> str:
    idx = mask.nonzero().flatten().tolist()
    return ", ".join(map(str, idx[:limit])) + (" ..." if len(idx) > limit else "")


def _check_times(times: Sequence[float] | Tensor) -> list[float]:
    try:
        values = [float(t) for t in (times.flatten() if isinstance(times, Tensor) else times)]
    except (TypeError, ValueError) as err:
        raise InvalidStateError(f"times must be a sequence of numbers: {err}") from None
    if not values:
        raise InvalidStateError("times is empty: give at least one output time")
    if not all(math.isfinite(t) for t in values):
        raise InvalidStateError(f"times must be finite, got {values}")
    if values[0] < 0:
        raise InvalidStateError(f"times must be >= 0, got {values[0]}")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise InvalidStateError(f"times must be strictly increasing, got {values}")
    return values


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InvalidStateError(f"{name} must be a positive finite number, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Entry point


def evolve(
    state: Tensor,
    times: Sequence[float] | Tensor,
    *,
    gamma: float = 1.4,
    cfl: float = 0.4,
    supersample: int = 1,
    domain: tuple[float, float] = (1.0, 1.0),
    limiter: str = "mc",
    compile: bool = False,
    progress: Callable[[float], None] | None = None,
    info: dict | None = None,
) -> Tensor:
    """Evolve conservative states from t = 0 and return them at the requested output times.

    Args:
        state: `(B, 4, H, W)` conservative (rho, m_x, m_y, E) at t = 0 on the simulation grid,
            any float dtype and device (the computation runs in that dtype and device).
            With `supersample = k` this is the fine grid; H and W must be divisible by k.
        times: `T` strictly increasing output times >= 0 (t = 0 returns the initial state).
        gamma: ratio of specific heats (> 1).
        cfl: Courant number of the unsplit 2D condition above; <= 0.5 is stable for this
            scheme (0.4 default). Larger values are allowed and end in `SolverError`.
        supersample: k: output the conservative k x k block average (`block_average`) of the
            fine solution, i.e. `(B, T, 4, H/k, W/k)`.
        domain: (Lx, Ly), the periodic domain's size; cell sizes are Lx / W and Ly / H.
            Rotations are exact symmetries of the discrete scheme only when Lx / W == Ly / H.
        limiter: TVD slope limiter, "mc" (monotonized central), "vanleer" or "minmod".
        compile: run the time step through `torch.compile` (faster for long runs; the first
            call per shape/dtype compiles for tens of seconds).
        progress: called with the simulated time whenever all trajectories have reached an
            output time (host syncs happen about once or twice per output time, not per step).
        info: if a dict is given, `info["steps"]` is set to the number of time steps each
            trajectory took, int64 `(B,)` (for benchmarks and dataset metadata).

    Returns:
        `(B, T, 4, H/k, W/k)`, same dtype and device as `state`.

    Raises:
        InvalidStateError: bad shape/dtype, NaN/inf, rho <= 0 or p <= 0, or bad arguments.
        SolverError: a step produced rho <= 0, p <= 0 or NaN/inf; names trajectory and time.

    For float32 on CPU call `torch.set_flush_denormal(True)` first (denormals slow it >10x).
    """
    gamma = _positive("gamma", gamma)
    if gamma <= 1:
        raise InvalidStateError(f"gamma must be > 1, got {gamma}")
    cfl = _positive("cfl", cfl)
    if limiter not in LIMITERS:
        raise InvalidStateError(f"unknown limiter {limiter!r}; choose from {sorted(LIMITERS)}")
    if isinstance(supersample, bool) or not isinstance(supersample, int) or supersample < 1:
        raise InvalidStateError(f"supersample must be a positive integer, got {supersample!r}")
    if len(domain) != 2:
        raise InvalidStateError(f"domain must be (Lx, Ly), got {domain!r}")
    lx, ly = _positive("domain Lx", domain[0]), _positive("domain Ly", domain[1])
    _check_state(state, gamma)
    out_times = _check_times(times)
    k = supersample
    if state.shape[2] % k or state.shape[3] % k:
        raise InvalidStateError(
            f"supersample={k} needs H and W divisible by {k}, got {tuple(state.shape[2:])}"
        )

    batch, _, h, w = state.shape
    dx, dy = lx / w, ly / h
    step = _compiled_step() if compile else _step
    out = state.new_empty((batch, len(out_times), 4, h // k, w // k))
    t = torch.zeros(batch, dtype=torch.float64, device=state.device)
    failed_at = torch.full_like(t, math.nan)
    steps = torch.zeros(batch, dtype=torch.int64, device=state.device)
    current = state
    for index, t_out in enumerate(out_times):
        target = torch.full_like(t, t_out)
        while True:
            # One host sync per round: how many steps does the slowest trajectory still need?
            dt = _cfl_dt(current, dx, dy, gamma, cfl)
            steps_left = torch.where(t < target, torch.ceil((target - t) / dt), 0.0)
            n = steps_left.max().item()
            if not n > 0:  # also stops on NaN (a failed state), reported below
                break
            for _ in range(int(min(n, 1e6))):
                current, t, failed_at, steps = step(
                    current, t, target, failed_at, steps, dx, dy, gamma, cfl, LIMITERS[limiter]
                )
            _raise_if_failed(failed_at, cfl)
        _raise_if_failed(failed_at, cfl)
        final_ok = torch.isnan(failed_at) & (t == target)
        if not bool(final_ok.all()):
            bad = int((~final_ok).nonzero()[0])
            raise SolverError(
                f"trajectory {bad} did not reach t={t_out} (stopped at t={float(t[bad]):.6g}); "
                f"its state became invalid (rho <= 0, p <= 0 or NaN)",
                bad,
                float(t[bad]),
            )
        out[:, index] = block_average(current, k)
        if progress is not None:
            progress(t_out)
    _check_final(current, gamma, float(out_times[-1]))
    if info is not None:
        info["steps"] = steps
    return out


def _raise_if_failed(failed_at: Tensor, cfl: float) -> None:
    failed = ~torch.isnan(failed_at)
    if bool(failed.any()):
        bad = int(failed.nonzero()[0])
        when = float(failed_at[bad])
        raise SolverError(
            f"trajectory {bad}: density or pressure became non-positive or NaN in the step "
            f"starting at t={when:.6g} (cfl={cfl}); {int(failed.sum())} trajectories failed",
            bad,
            when,
        )


def _check_final(state: Tensor, gamma: float, t_final: float) -> None:
    ok = ((state[:, 0] > 0) & (pressure(state, gamma) > 0)).flatten(1).all(1)
    ok &= torch.isfinite(state).flatten(1).all(1)
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0])
        raise SolverError(
            f"trajectory {bad}: density or pressure non-positive or NaN at t={t_final:.6g}",
            bad,
            t_final,
        )
