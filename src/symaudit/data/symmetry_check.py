"""How symmetric is the data generator itself? The floor under a model's transformed error.

An emulator's transformed error E_g = SMSE(f(g x_t), g x_t+1) can only be read against the
data: if the generator does not commute with g, the transformed target g x_t+1 is not what the
generator would produce from g x_t, and no model can beat that gap. Two measurements:

* **Paired** (the generator is available, e.g. our solver): for transitions (x_t, x_t+dt),

      D_g^data(x) = SMSE(S(g x_t), g S(x_t))      (S: the solver over dt)

  computed by `equivariance_error` on the solver wrapped as a module (`SolverStep`), so the
  numbers are in exactly the units of a model's D_g. Our solver gives 0.0 for D4 and shifts
  (bitwise mirrored fluxes); Galilean boosts are not symmetries of the discrete scheme (its
  numerical diffusion depends on the frame), so their defect is the floor for boost audits.
  The same call also gives SMSE(S(x_t), x_t+dt): whether the file is reproduced at all.

* **Statistical** (only files, e.g. PDEGym or The Well): if the distribution of states is
  invariant under g, every feature phi has E[phi(g x)] = E[phi(x)]. `distribution_asymmetry`
  pairs each state with its image, d = phi(g x) - phi(x), and reports per snapshot index
  (trajectories are the independent samples) and per feature the t-statistic
  z = mean(d) / (sd(d) / sqrt(n)) and the asymmetry |mean d| (features are scale-free
  ratios of order 1) next to its noise floor sd(d) / sqrt(n). A group element is
  flagged when max_k |z_k| exceeds the Bonferroni threshold over features and elements.
  Galilean boosts are refused here: no ensemble of bounded velocities is boost invariant, the
  symmetry is one of the dynamics only (use the paired check).
  Features (`state_features`): per channel, the anisotropy and shear of its gradient energy,
  its normalised mean (reflections flip vector means), and its lowest Fourier modes
  (translations rotate them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from symaudit.fields import FieldLayout

__all__ = [
    "AsymmetryResult",
    "SolverStep",
    "distribution_asymmetry",
    "feature_names",
    "state_features",
]


class SolverStep(nn.Module):
    """Our Euler solver over ``steps`` intervals ``dt`` as a module `(n, 4, H, W) -> (n, 4, H,
    W)`: the state at steps * dt, passing through the output times dt, 2 dt, ... exactly as
    dataset generation does (the solver shortens its step to land on each).

    Runs `symaudit.physics.evolve` in ``dtype`` (float64 by default: the defect of a boost is
    small and must not drown in float32 round-off) on the input's device, and returns the
    input's dtype. No parameters: `equivariance_error` then takes device and dtype from the
    batch (pass ``dtype=torch.float64`` there as well to keep the comparison in float64)."""

    def __init__(
        self,
        dt: float,
        *,
        steps: int = 1,
        gamma: float = 1.4,
        cfl: float = 0.4,
        limiter: str = "mc",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive number, got {dt!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self.steps = steps
        self.dt, self.gamma, self.cfl, self.limiter, self.dtype = dt, gamma, cfl, limiter, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from symaudit.physics.euler import evolve

        out = evolve(
            x.to(self.dtype),
            [k * self.dt for k in range(self.steps + 1)],
            gamma=self.gamma,
            cfl=self.cfl,
            limiter=self.limiter,
        )
        return out[:, -1].to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"dt={self.dt:g}, steps={self.steps}, gamma={self.gamma:g}, cfl={self.cfl:g}, "
            f"limiter={self.limiter}"
        )


# -- statistical check ---------------------------------------------------------------------------

#: standard errors below this (per 64^2 pixels) are round-off of the float64 pixel means
_ROUNDOFF = 1e-12

#: Fourier modes (k_x, k_y) whose coefficients are features (translations rotate their phase)
_MODES = ((1, 0), (0, 1), (1, 1), (1, -1))


def feature_names(layout: FieldLayout) -> list[str]:
    """Names of the columns of `state_features` for ``layout``, in order."""
    names = []
    for c in layout.names:
        names += [f"{c}:aniso", f"{c}:shear", f"{c}:mean/rms"]
        for kx, ky in _MODES:
            names += [f"{c}:re({kx},{ky})", f"{c}:im({kx},{ky})"]
    return names


def state_features(x: torch.Tensor) -> torch.Tensor:
    """Scale-free features `(..., K)` of states `(..., C, H, W)`, K = C * (3 + 2 * 4), in
    float64. Per channel u, with forward differences d_x u, d_y u and pixel means <.>:

        aniso = (<d_x u^2> - <d_y u^2>) / (<d_x u^2> + <d_y u^2>)    (axis swaps flip it)
        shear = 2 <d_x u d_y u> / (<d_x u^2> + <d_y u^2>)            (diagonal reflections)
        mean/rms = <u> / <u^2>^(1/2)                                 (reflections of vectors)
        re, im (k) = <u cos/sin(2 pi k.p)> / <u^2>^(1/2)             (translations)

    Dividing by the state's own scale keeps one trajectory's amplitude (which varies by 10x
    between CE-RP states) from dominating the noise of the mean."""
    x = x.double()
    dx = torch.roll(x, -1, dims=-1) - x
    dy = torch.roll(x, -1, dims=-2) - x
    gx, gy, gxy = ((a * b).mean((-2, -1)) for a, b in ((dx, dx), (dy, dy), (dx, dy)))
    grad = (gx + gy).clamp_min(1e-300)
    rms = x.square().mean((-2, -1)).sqrt().clamp_min(1e-300)
    parts = [(gx - gy) / grad, 2 * gxy / grad, x.mean((-2, -1)) / rms]
    h, w = x.shape[-2:]
    j = torch.arange(h, dtype=torch.float64, device=x.device).view(-1, 1)
    i = torch.arange(w, dtype=torch.float64, device=x.device).view(1, -1)
    for kx, ky in _MODES:
        phase = 2 * math.pi * (kx * i / w + ky * j / h)
        parts += [
            (x * torch.cos(phase)).mean((-2, -1)) / rms,
            (x * torch.sin(phase)).mean((-2, -1)) / rms,
        ]
    return torch.stack(parts, dim=-1).flatten(-2)  # (..., C * 11)


@dataclass
class AsymmetryResult:
    """`distribution_asymmetry` output. Tensors are float64 on the CPU.

    Attributes:
        elements: element names (length G).
        features: feature names (length K).
        times: snapshot times `(T,)`; statistics are per snapshot index and over all.
        z: `(G, T, K)` t-statistics of the paired differences per snapshot.
        relative: `(G, T, K)` |mean d| (the features are scale-free, of order 1).
        noise: `(G, T, K)` sd(d) / sqrt(n): the asymmetry that noise of n trajectories
            produces at one standard error.
        threshold: |z| above which an element is flagged (Bonferroni, see ``alpha``).
        trajectories: n, the number of independent samples.
        alpha: family-wise false-alarm probability of the flags.
    """

    elements: list[str]
    features: list[str]
    times: torch.Tensor
    z: torch.Tensor
    relative: torch.Tensor
    noise: torch.Tensor
    threshold: float
    trajectories: int
    alpha: float

    def flagged(self) -> dict[str, bool]:
        """{element: max over snapshots and features of |z| > threshold}."""
        peak = self.z.abs().flatten(1).amax(1)
        return {g: bool(p > self.threshold) for g, p in zip(self.elements, peak, strict=True)}

    def summary(self) -> list[dict]:
        """Per element and snapshot: the feature of largest |z|, its z, relative asymmetry and
        noise floor (JSON-able)."""
        rows = []
        for gi, g in enumerate(self.elements):
            for ti in range(self.z.shape[1]):
                k = int(self.z[gi, ti].abs().argmax())
                rows.append(
                    {
                        "element": g,
                        "time": float(self.times[ti]),
                        "feature": self.features[k],
                        "z": float(self.z[gi, ti, k]),
                        "relative": float(self.relative[gi, ti, k]),
                        "noise": float(self.noise[gi, ti, k]),
                        "max_relative": float(self.relative[gi, ti].max()),
                        "flag": bool(self.z[gi, ti].abs().max() > self.threshold),
                    }
                )
        return rows


def _bonferroni_threshold(alpha: float, tests: int, dof: int) -> float:
    """Two-sided Student-t quantile at alpha / tests with ``dof`` degrees of freedom, found by
    bisection on the regularised incomplete beta function (torch has no t quantile)."""
    p = alpha / tests

    def tail(t: float) -> float:  # P(|T| > t) = I_{dof/(dof+t^2)}(dof/2, 1/2)
        x = dof / (dof + t * t)
        return float(_betainc(dof / 2.0, 0.5, x))

    lo, hi = 0.0, 1.0
    while tail(hi) > p:
        hi *= 2.0
        if hi > 1e8:
            return hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tail(mid) > p else (lo, mid)
    return hi


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes
    6.4), accurate to ~1e-12 for the a, b > 0 used here."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * f / a


def distribution_asymmetry(
    trajectories: torch.Tensor,
    group,
    *,
    times: torch.Tensor | None = None,
    alpha: float = 1e-3,
) -> AsymmetryResult:
    """Is the distribution of snapshots invariant under each element of ``group``?

    Args:
        trajectories: `(n, T, C, H, W)`, n independent trajectories (n >= 3) of T snapshots.
        group: a `symaudit.groups.Group` (or iterable of named callables on `(..., C, H, W)`)
            without Galilean boosts (`ValueError`: see the module docstring).
        times: `(T,)` snapshot times (default 0, 1, ...).
        alpha: family-wise false-alarm rate of the flags (Bonferroni over elements, snapshots
            and features).

    Returns: `AsymmetryResult`. See the module docstring for the statistic.
    """
    if trajectories.ndim != 5:
        raise ValueError(
            f"trajectories must be (n, T, C, H, W), got shape {tuple(trajectories.shape)}"
        )
    n, t = trajectories.shape[:2]
    if n < 3:
        raise ValueError(f"need at least 3 independent trajectories for a noise floor, got {n}")
    if not torch.isfinite(trajectories).all():
        raise ValueError("trajectories contain NaN or inf")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    layout = getattr(group, "layout", None)
    elements = list(group)
    boosts = [g.name for g in elements if getattr(g, "velocity", (0.0, 0.0)) != (0.0, 0.0)]
    if boosts:
        raise ValueError(
            f"Galilean boosts {boosts} cannot be checked statistically (no ensemble of bounded "
            "velocities is boost invariant): use the paired solver check"
        )
    phi = state_features(trajectories)  # (n, T, K)
    h, w = trajectories.shape[-2:]
    zs, rel, noise = [], [], []
    for g in elements:
        d = state_features(g(trajectories)) - phi  # (n, T, K)
        mean, sd = d.mean(0), d.std(0, unbiased=True)
        se = sd / math.sqrt(n)
        # features are O(1) pixel means: differences below _ROUNDOFF (H W eps_64 for 64^2 and
        # more) are summation order, not asymmetry; z = 0 there, not round-off / round-off
        real = se > _ROUNDOFF * max(1, h * w / 4096)
        zs.append(torch.where(real, mean / se.clamp_min(1e-300), torch.zeros_like(mean)))
        rel.append(mean.abs())
        noise.append(se)
    k = phi.shape[-1]
    threshold = _bonferroni_threshold(alpha, len(elements) * t * k, n - 1)
    names = feature_names(layout) if layout is not None else [f"f{i}" for i in range(k)]
    return AsymmetryResult(
        elements=[g.name for g in elements],
        features=names,
        times=(torch.arange(t, dtype=torch.float64) if times is None else times.double().cpu()),
        z=torch.stack(zs).cpu(),
        relative=torch.stack(rel).cpu(),
        noise=torch.stack(noise).cpu(),
        threshold=threshold,
        trajectories=n,
        alpha=alpha,
    )
