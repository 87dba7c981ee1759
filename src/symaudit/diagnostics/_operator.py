"""Symmetric linear operators on the flat parameter space, and the free functions over them.

An operator is anything with ``shape`` `(P, P)`, ``dtype``, ``device`` and ``matmat`` (a
`(P, k)` block to a `(P, k)` block), symmetric positive semi-definite: the metric eta
(`symaudit.diagnostics.metric.MetricOperator`), a dense matrix (`DenseOperator`), or a
foreign operator with ``@`` such as curvlinops' ``GGNLinearOperator`` (`as_operator`).
`Damped(op, lam)` is op + lam I, a new object per damping (nothing is mutated), and is itself an
operator; the Krylov solvers (`symaudit.diagnostics.krylov`) take operators or plain callables.

Free functions: `top_eigenvalue` (power iteration) and `hutchinson_trace` (Rademacher probes).
An operator may provide ``quadratic_form(V)`` (v^T A v per column) more cheaply than
``matmat``: the metric does, from J v alone; `hutchinson_trace` uses it when present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "Damped",
    "DenseOperator",
    "SymmetricOperator",
    "as_operator",
    "hutchinson_trace",
    "top_eigenvalue",
]


@runtime_checkable
class SymmetricOperator(Protocol):
    """A symmetric `(P, P)` operator applied to `(P, k)` blocks."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def matmat(self, V: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Damped:
    """A + lam I for a symmetric operator A and a damping lam >= 0 (a new object per lam)."""

    op: SymmetricOperator
    damping: float

    def __post_init__(self) -> None:
        lam = float(self.damping)
        if not lam >= 0 or lam == float("inf"):
            raise ValueError(f"damping must be a finite number >= 0, got {self.damping!r}")
        object.__setattr__(self, "damping", lam)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.op.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.op.dtype

    @property
    def device(self) -> torch.device:
        return self.op.device

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """(A + lam I) V for `(P,)` or `(P, k)` V."""
        return self.op.matmat(V) + self.damping * V.to(device=self.device, dtype=self.dtype)

    __call__ = matmat


class DenseOperator:
    """An explicit symmetric matrix `(P, P)` as an operator (tests, small problems)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.shape = tuple(matrix.shape)
        self.dtype = matrix.dtype
        self.device = matrix.device

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.matrix @ V

    __call__ = matmat


class _MatmulOperator:
    """Adapter for objects that multiply by ``@`` (e.g. curvlinops' ``PyTorchLinearOperator``)."""

    def __init__(self, linop: Any) -> None:
        self.linop = linop
        self.shape = tuple(linop.shape)
        self.dtype = linop.dtype
        self.device = torch.device(linop.device)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        vec = V.ndim == 1
        out = self.linop @ V.reshape(V.shape[0], -1)
        return out[:, 0] if vec else out

    __call__ = matmat


def as_operator(obj: Any) -> SymmetricOperator:
    """``obj`` if it implements `SymmetricOperator`, else an adapter for an object with
    ``shape``, ``dtype``, ``device`` and ``@`` (curvlinops' linear operators)."""
    if isinstance(obj, SymmetricOperator):
        return obj
    if all(hasattr(obj, a) for a in ("shape", "dtype", "device", "__matmul__")):
        return _MatmulOperator(obj)
    raise TypeError(
        f"{type(obj).__name__} is not an operator: it needs shape, dtype, device and matmat (or @)"
    )


def top_eigenvalue(
    op: SymmetricOperator,
    *,
    iters: int = 30,
    rtol: float = 1e-3,
    seed: int = 0,
    start: torch.Tensor | None = None,
) -> float:
    """Largest eigenvalue of a PSD operator by power iteration, stopped when the Rayleigh
    quotient changes by less than ``rtol`` (relative). ``start``: a unit vector `(P,)` to
    begin from (e.g. a Nyström sketch's top eigenvector, which needs a few iterations only);
    default a seeded Gaussian vector, normalised."""
    if start is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(op.shape[0], generator=g, dtype=op.dtype).to(op.device)
        v = v / v.norm()
    else:
        v = start.clone()
    lam = 0.0
    for _ in range(iters):
        w = op.matmat(v)
        new = float(v @ w)
        v = w / w.norm()
        if abs(new - lam) <= rtol * abs(new):
            return new
        lam = new
    return lam


def hutchinson_trace(
    op: SymmetricOperator, probes: int = 16, *, seed: int = 0
) -> tuple[float, float]:
    """Hutchinson estimate of tr(op) with Rademacher probes: (estimate, standard error).
    Uses ``op.quadratic_form`` when the operator has one (v^T A v without the full product)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    Z = torch.randint(0, 2, (op.shape[0], probes), generator=g).to(op.dtype) * 2 - 1
    Z = Z.to(op.device)
    quad = getattr(op, "quadratic_form", None)
    q = (quad(Z) if quad is not None else (Z * op.matmat(Z)).sum(0)).double()
    err = float(q.std() / probes**0.5) if probes > 1 else float("nan")
    return float(q.mean()), err
