"""Response of an emulator to Galilean boosts of increasing speed (the paper's open question 2).

A boost by c observed after time T displaces the state by c T, which on an N-cell periodic grid
must be a whole number of cells (shocked fields cannot be interpolated without smearing the
very discontinuities under audit). One emulator step dt therefore only admits c = k / (dt N):
at the demo's dt = 0.05, N = 64 the smallest boost is 0.3125, comparable to the flow. Smaller
boosts become exact pixel shifts over an m-step rollout, c = k / (m dt N): `Rollout` wraps the
model as the m-step map f^m, which is itself an `(n, C, H, W) -> (n, C, H, W)` module, so the
ordinary diagnostics apply unchanged (E_g, D_g, and the influence of the m-step loss
SMSE(f^m(x_0), x_m)). m = 1 is the paper's one-step audit.

`boost_response` evaluates, for speeds c_k = k c_min (k in ``multiples``):

    E(c)  = SMSE(f^m(K_c x_0), T_(c m dt) K_c x_m)           transformed error
    D(c)  = SMSE(f^m(K_c x_0), T_(c m dt) K_c f^m(x_0))      equivariance defect
    D_kick(c) = SMSE(f^m(K_c x_0), K_c f^m(T_(c m dt) x_0))  kick defect
    I(c)  = M^(g_c)_ii / M^e_ii                              raw self-influence ratio (-> 1)
    1 - cos(c)  (optional)                                   cosine-normalised deficit

and, with the solver as the model (`symaudit.data.symmetry_check.SolverStep`), the same D(c)
of the data generator: the floor below which E(c) - E(0) says nothing about the model.

D_kick compares two outputs whose solutions sit at the same place on the grid (the solver
satisfies S(K_c x) = K_c S(T_(c T) x) as well, since T and K commute): it removes the model's
non-equivariance to the whole-cell displacement itself (a ViT's patch grid, a UNet's
down-sampling), which D(c) contains and which does not vanish as c -> 0 because the smallest
boost already moves the solution by one cell. D_kick = D for a shift-equivariant model.

Linear response: the first-order change of f^m(K_c x) in c makes |1 - I(c)| ∝ c and
1 - cos(c) ∝ c^2 (the cosine is stationary at c = 0). D(c) ∝ c^2 for smooth responses, but
∝ c where the response displaces discontinuities (the squared error of a jump moved by δ grows
like δ, not δ^2). `power_law` fits the exponent; `linear_regime` finds the speed range in which
the local exponents stay at the small-speed value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from symaudit.diagnostics.equivariance import equivariance_error
from symaudit.fields import FieldLayout
from symaudit.groups import GalileanBoost, GroupError
from symaudit.training.loss import SMSE

__all__ = [
    "BoostResponse",
    "Rollout",
    "boost_group",
    "boost_response",
    "kick_defects",
    "linear_regime",
    "local_exponents",
    "min_boost_speed",
    "power_law",
]

_DIRECTIONS = {"x": (1.0, 0.0), "y": (0.0, 1.0), "xy": (1.0, 1.0)}


class Rollout(nn.Module):
    """The m-step autoregressive map x -> f(f(...f(x))) of a one-step emulator ``model``.

    Shares the model's parameters (named ``model.*``), so gradients, the metric and the
    influence of the m-step loss are those of the same weights."""

    def __init__(self, model: nn.Module, steps: int) -> None:
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self.model = model
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(n, C, H, W) -> (n, C, H, W)`."""
        for _ in range(self.steps):
            x = self.model(x)
        return x


def min_boost_speed(resolution: int, dt: float, steps: int = 1) -> float:
    """The smallest boost speed c whose displacement c * steps * dt * resolution is one whole
    cell of the unit square: 1 / (steps * dt * resolution)."""
    if resolution < 1 or not dt > 0 or steps < 1:
        raise ValueError(
            f"need resolution >= 1, dt > 0, steps >= 1; got {resolution}, {dt}, {steps}"
        )
    return 1.0 / (steps * dt * resolution)


def boost_group(
    layout: FieldLayout,
    resolution: int,
    dt: float,
    *,
    steps: int = 1,
    multiples: Sequence[int] = (0, 1, 2, 4, 8),
    direction: str = "x",
) -> GalileanBoost:
    """Boosts by k * c_min along ``direction`` ("x", "y" or "xy"), observed at steps * dt, for
    k in ``multiples`` (0 is the identity; include it: it is the reference of every ratio)."""
    if direction not in _DIRECTIONS:
        raise GroupError(f"direction must be one of {sorted(_DIRECTIONS)}, got {direction!r}")
    ks = [int(k) for k in multiples]
    if any(k < 0 for k in ks) or len(set(ks)) != len(ks) or 0 not in ks:
        raise GroupError(f"multiples must be distinct, >= 0 and include 0, got {list(multiples)}")
    c = min_boost_speed(resolution, dt, steps)
    ux, uy = _DIRECTIONS[direction]
    return GalileanBoost(layout, (c * ux, c * uy), steps * dt, multiples=sorted(ks))


@dataclass
class BoostResponse:
    """Per speed (ascending, the first 0) and test state. Tensors float64 on the CPU.

    Attributes:
        speeds: `(K,)` |c| (Euclidean norm of the boost velocity).
        elements: element names (length K).
        error, defect, kick_defect: `(K, N)` E(c), D(c), D_kick(c).
        influence_ratio: `(K, N)` M^(g_c)_ii / M^e_ii, or None without influence.
        cosine: `(K, N)` cosine-normalised self-influence, or None.
        settings: steps, dt, model checksum, damping, solver residuals, ...
    """

    speeds: torch.Tensor
    elements: list[str]
    error: torch.Tensor
    defect: torch.Tensor
    kick_defect: torch.Tensor | None = None
    influence_ratio: torch.Tensor | None = None
    cosine: torch.Tensor | None = None
    settings: dict = field(default_factory=dict)

    def curves(self) -> dict[str, list[float]]:
        """Median over states of each quantity per speed (JSON-able): ``error``, ``defect``,
        ``influence_change`` = |1 - I(c)|, ``cosine_deficit`` = 1 - cos(c)."""
        med = lambda t: t.median(dim=1).values.tolist()  # noqa: E731
        out = {"speeds": self.speeds.tolist(), "error": med(self.error), "defect": med(self.defect)}
        if self.kick_defect is not None:
            out["kick_defect"] = med(self.kick_defect)
        if self.influence_ratio is not None:
            out["influence_change"] = med((1.0 - self.influence_ratio).abs())
        if self.cosine is not None:
            out["cosine_deficit"] = med(1.0 - self.cosine)
        return out

    def to_payload(self) -> dict:
        d = {
            "speeds": self.speeds,
            "elements": list(self.elements),
            "error": self.error,
            "defect": self.defect,
            "settings": self.settings,
        }
        if self.kick_defect is not None:
            d["kick_defect"] = self.kick_defect
        if self.influence_ratio is not None:
            d["influence_ratio"] = self.influence_ratio
        if self.cosine is not None:
            d["cosine"] = self.cosine
        return d

    @classmethod
    def from_payload(cls, d: dict) -> BoostResponse:
        return cls(
            speeds=d["speeds"],
            elements=list(d["elements"]),
            error=d["error"],
            defect=d["defect"],
            kick_defect=d.get("kick_defect"),
            influence_ratio=d.get("influence_ratio"),
            cosine=d.get("cosine"),
            settings=dict(d.get("settings", {})),
        )


def boost_response(
    model: nn.Module,
    loss: SMSE,
    batch: tuple[torch.Tensor, torch.Tensor],
    group: GalileanBoost,
    *,
    steps: int = 1,
    influence: bool = True,
    cosine: bool = False,
    damping: float | str = "auto",
    rtol: float = 5e-3,
    rank: int | str = "auto",
    max_iter: int = 500,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> BoostResponse:
    """E(c), D(c) and (optionally) the self-influence of each test state on its boosted twin.

    Args:
        model: a one-step emulator `(n, C, H, W) -> (n, C, H, W)` (or a solver module); it is
            rolled out ``steps`` times (`Rollout`).
        batch: (x_0, x_steps), each `(N, C, H, W)`: states and the data ``steps`` later.
        group: boosts observed at steps * dt, identity included (`boost_group`).
        influence, cosine: compute I(c) (one solve per state) and the cosine (one more solve
            per boosted state). damping, rtol, rank, max_iter: as `influence`.
        device, dtype: where the forward passes run (default: the model's).
    """
    from symaudit.diagnostics.influence import influence as influence_fn

    names = [g.name for g in group]
    ident = [i for i, g in enumerate(group) if g.is_identity]
    if not ident:
        raise GroupError("the boost group must contain the identity (multiple 0)")
    f = model if steps == 1 else Rollout(model, steps)
    eq = equivariance_error(f, batch, group, loss, device=device, dtype=dtype, progress=progress)
    kick = kick_defects(f, loss, batch[0], group, eq.settings)
    speeds = torch.tensor([math.hypot(*g.velocity) for g in group], dtype=torch.float64)
    settings = {"steps": steps, "eq": eq.settings, "group": group.describe()}
    ratio = cos = None
    if influence:
        res = influence_fn(
            f,
            loss,
            batch,
            group,
            damping=damping,
            rtol=rtol,
            rank=rank,
            max_iter=max_iter,
            cosine=cosine,
            progress=progress,
        )
        diag = res.raw.diagonal(dim1=1, dim2=2)  # (K, N)
        ratio = diag / diag[ident[0]].clamp_min(1e-300)
        cos = res.diagonal("cosine") if cosine else None
        settings["influence"] = {
            "damping": res.damping,
            "rtol": rtol,
            "max_residual": max(max(r["residuals"]) for r in res.reports.values()),
            "converged": res.all_converged,
            "timings": res.timings,
            "num_params": res.settings.get("num_params"),
        }
    order = torch.argsort(speeds)
    pick = lambda t: None if t is None else t[order].double().cpu()  # noqa: E731
    return BoostResponse(
        speeds=speeds[order],
        elements=[names[i] for i in order.tolist()],
        error=pick(eq.error),
        defect=pick(eq.defect),
        kick_defect=pick(kick),
        influence_ratio=pick(ratio),
        cosine=pick(cos),
        settings=settings,
    )


def kick_defects(f: nn.Module, loss: SMSE, x: torch.Tensor, group, placed: dict) -> torch.Tensor:
    """`(K, N)` D_kick = SMSE(f(K_c x), K_c f(T_(c T) x)) for every boost of ``group`` (in
    group order), on the device and dtype `equivariance_error` used (``placed``: its
    settings, keys "device" and "dtype")."""
    from symaudit.groups._actions import translate

    dev, dt = torch.device(placed["device"]), getattr(torch, placed["dtype"])
    x = x.to(device=dev, dtype=dt)
    was = f.training
    f.eval()
    try:
        with torch.no_grad():
            out = torch.empty(len(group), x.shape[0], dtype=torch.float64)
            for i, g in enumerate(group):
                kx, ky = g.boost_cells(x.shape[-2], x.shape[-1])
                k0 = g.at_time(0.0)
                pred = f(k0(x))
                ref = k0(f(translate(x, kx, ky)))
                out[i] = loss.per_sample(pred, ref).double().cpu()
    finally:
        f.train(was)
    return out


def local_exponents(speeds: Sequence[float], values: Sequence[float]) -> list[float | None]:
    """d log v / d log c between consecutive positive speeds (None where a value is <= 0)."""
    out: list[float | None] = []
    pts = [(c, v) for c, v in zip(speeds, values, strict=True) if c > 0]
    for (c0, v0), (c1, v1) in zip(pts, pts[1:], strict=False):
        out.append(math.log(v1 / v0) / math.log(c1 / c0) if v0 > 0 and v1 > 0 else None)
    return out


def power_law(speeds: Sequence[float], values: Sequence[float]) -> dict[str, float] | None:
    """Least-squares fit log v = p log c + log a over the positive (c, v) pairs given:
    {"exponent": p, "prefactor": a, "residual": rms of the log residuals}; None if < 2 points."""
    pts = [
        (math.log(c), math.log(v)) for c, v in zip(speeds, values, strict=True) if c > 0 and v > 0
    ]
    if len(pts) < 2:
        return None
    x = torch.tensor([p[0] for p in pts], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pts], dtype=torch.float64)
    A = torch.stack([x, torch.ones_like(x)], 1)
    sol = torch.linalg.lstsq(A, y.unsqueeze(1)).solution.squeeze(1)
    resid = y - A @ sol
    return {
        "exponent": float(sol[0]),
        "prefactor": float(sol[1].exp()),
        "residual": float(resid.square().mean().sqrt()),
    }


def linear_regime(
    speeds: Sequence[float],
    values: Sequence[float],
    *,
    points: int = 3,
    tolerance: float = 0.25,
) -> dict | None:
    """The small-speed power law and how far it holds.

    Fits the exponent p0 on the ``points`` smallest positive speeds, then extends the range
    upward while each next local exponent (`local_exponents`) stays within ``tolerance`` of
    p0. Returns {"exponent": p0, "fit": `power_law` on the final range, "max_speed": the
    largest speed of the range, "local_exponents": [...]}; None with too few points."""
    pos = [(c, v) for c, v in zip(speeds, values, strict=True) if c > 0]
    if len(pos) < max(2, points):
        return None
    cs, vs = [p[0] for p in pos], [p[1] for p in pos]
    first = power_law(cs[:points], vs[:points])
    if first is None:
        return None
    p0 = first["exponent"]
    loc = local_exponents(cs, vs)
    end = points - 1
    while end + 1 < len(cs) and loc[end] is not None and abs(loc[end] - p0) <= tolerance:
        end += 1
    return {
        "exponent": p0,
        "fit": power_law(cs[: end + 1], vs[: end + 1]),
        "max_speed": cs[end],
        "local_exponents": loc,
        "tolerance": tolerance,
    }
