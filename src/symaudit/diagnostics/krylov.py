"""Batched preconditioned conjugate gradients with honest per-column reports, and the
randomized Nyström preconditioner.

``cg`` solves A X = B for a `(P, k)` block B, a symmetric positive-definite A given as a
function on `(P, m)` blocks. Every column runs its own CG recurrence (own alpha, beta) but the
products with A are made for all still-active columns at once, so the model's forward pass is
shared. Each column stops on its own *true* relative residual ||A x - b|| <= rtol ||b||:
when the recursive residual says so, the true residual is recomputed before the column is
declared converged (and the recurrence restarted from it if it had drifted); at the end every
column's true residual is reported. Columns that do not converge within ``max_iter`` raise a
`ConvergenceWarning` and are flagged in the report -- never silent.
Note: unlike GPyTorch (default tolerance 1 on the *mean* column residual) or pyDVL (stops at
||r|| < rtol^2 ||b||), rtol here is exactly the relative residual of each column.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

__all__ = [
    "ConvergenceWarning",
    "NystromPreconditioner",
    "SolveReport",
    "cg",
]

Operator = Callable[[torch.Tensor], torch.Tensor]


class ConvergenceWarning(UserWarning):
    """A Krylov solve stopped before reaching its requested tolerance."""


@dataclass
class SolveReport:
    """Per-column outcome of a batched solve (lists of length k)."""

    rtol: float
    max_iter: int
    residuals: list[float]  # true relative residual ||A x - b|| / ||b|| reached
    iterations: list[int]
    converged: list[bool]
    products: int  # column products with A, including residual checks
    column_products: list[int] = field(default_factory=list)  # the same, per column
    restarts: int = 0  # columns restarted because the recursive residual had drifted
    seconds: float = 0.0
    history: list[float] = field(default_factory=list)  # max active relative residual per iter

    @property
    def all_converged(self) -> bool:
        return all(self.converged)

    def to_dict(self) -> dict:
        return asdict(self)

    def select(self, columns: list[int]) -> SolveReport:
        """The report restricted to some columns (products counted per column; the time and
        history stay those of the whole block)."""
        cp = [self.column_products[i] for i in columns]
        return SolveReport(
            rtol=self.rtol,
            max_iter=self.max_iter,
            residuals=[self.residuals[i] for i in columns],
            iterations=[self.iterations[i] for i in columns],
            converged=[self.converged[i] for i in columns],
            products=sum(cp),
            column_products=cp,
            restarts=self.restarts,
            seconds=self.seconds,
            history=self.history,
        )

    @staticmethod
    def merge(reports: list[SolveReport]) -> SolveReport:
        """Concatenate the columns of several reports (same rtol/max_iter)."""
        if not reports:
            return SolveReport(0.0, 0, [], [], [], 0)
        return SolveReport(
            rtol=reports[0].rtol,
            max_iter=reports[0].max_iter,
            residuals=[r for rep in reports for r in rep.residuals],
            iterations=[i for rep in reports for i in rep.iterations],
            converged=[c for rep in reports for c in rep.converged],
            products=sum(rep.products for rep in reports),
            column_products=[p for rep in reports for p in rep.column_products],
            restarts=sum(rep.restarts for rep in reports),
            seconds=sum(rep.seconds for rep in reports),
            history=[h for rep in reports for h in rep.history],
        )


class NystromPreconditioner:
    """Randomized Nyström preconditioner for A = eta + mu I (Frangella, Tropp & Udell 2023,
    "Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl. 44(2), Alg. 2.1 + eq. 5.3).

    With a rank-l approximation eta ~ U diag(lam) U^T (U: `(P, l)` orthonormal, lam descending),

        P^{-1} = (lam_l + mu) U diag(1 / (lam + mu)) U^T + (I - U U^T).

    Built from one block product eta Omega with an orthonormal Gaussian test matrix Omega,
    stabilised by a shift nu = eps * sqrt(P) * ||Y||_F before the Cholesky factorisation.

    Args:
        eta: the PSD part, applied to `(P, l)` blocks (the damping is *not* included).
        num_params: P.  rank: l.  mu: the damping lambda (can be changed later; the sketch of
        eta does not depend on it).  dtype/device: of the sketch.  seed: of Omega.
    """

    def __init__(
        self,
        eta: Operator,
        num_params: int,
        rank: int,
        mu: float,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> None:
        if not 0 < rank <= num_params:
            raise ValueError(f"rank must be in 1..{num_params}, got {rank}")
        t0 = time.perf_counter()
        g = torch.Generator(device="cpu").manual_seed(seed)
        omega = torch.randn(num_params, rank, generator=g, dtype=torch.float64)
        omega = torch.linalg.qr(omega).Q.to(device=device, dtype=dtype)
        Y = eta(omega).to(torch.float64)
        omega = omega.to(torch.float64)
        # float64 factorisation with a tiny shift: Omega^T Y is PSD but may be singular
        nu = torch.finfo(dtype).eps * num_params**0.5 * float(Y.norm())
        Y = Y + nu * omega
        M = omega.T @ Y
        M = 0.5 * (M + M.T)
        C, info = torch.linalg.cholesky_ex(M)
        if int(info) != 0:  # fall back to an eigendecomposition with clipped eigenvalues
            w, Q = torch.linalg.eigh(M)
            w = w.clamp_min(nu)
            B = Y @ Q / w.sqrt()
        else:
            B = torch.linalg.solve_triangular(C, Y.T, upper=False).T  # Y C^{-T}
        U, S, _ = torch.linalg.svd(B, full_matrices=False)
        self.eigenvalues = (S.square() - nu).clamp_min(0.0)  # descending
        self.U = U.to(dtype)
        self.rank = rank
        self.mu = float(mu)
        self.products = rank
        self.seconds = time.perf_counter() - t0

    @property
    def top_eigenvalue(self) -> float:
        """Largest eigenvalue of the approximation (a lower bound on eta's)."""
        return float(self.eigenvalues[0])

    def __call__(self, R: torch.Tensor) -> torch.Tensor:
        lam = self.eigenvalues.to(R.dtype)
        scale = (lam[-1] + self.mu) / (lam + self.mu) - 1.0
        UtR = self.U.T @ R
        return R + self.U @ (scale.unsqueeze(-1) * UtR)


def _colnorm(X: torch.Tensor) -> torch.Tensor:
    return X.norm(dim=0)


def cg(
    A: Operator,
    B: torch.Tensor,
    *,
    rtol: float = 5e-3,
    max_iter: int = 500,
    preconditioner: Operator | None = None,
    X0: torch.Tensor | None = None,
    warn: bool = True,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, SolveReport]:
    """Solve A X = B column by column with batched products.

    Args:
        A: symmetric positive-definite operator on `(P, m)` blocks.
        B: right-hand sides `(P, k)` (or `(P,)`).
        rtol: each column stops when ||A x - b|| <= rtol ||b|| (true residual).
        max_iter: CG iterations per column (residual checks not counted).
        preconditioner: SPD operator approximating A^{-1}, on `(P, m)` blocks.
        X0: initial guess (default zero).
        callback: called as ``callback(iteration, relative_residuals)`` after each iteration.

    Returns: X `(P, k)` and a `SolveReport`.
    """
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    vec = B.ndim == 1
    B = B.reshape(B.shape[0], -1)
    if not torch.isfinite(B).all():
        raise ValueError("right-hand sides contain NaN/inf")
    t0 = time.perf_counter()
    P, k = B.shape
    M = preconditioner if preconditioner is not None else (lambda R: R)
    bnorm = _colnorm(B)
    tol = rtol * bnorm
    products = 0
    colprod = torch.zeros(k, dtype=torch.long, device=B.device)
    X = torch.zeros_like(B) if X0 is None else X0.reshape(P, k).clone()
    R = B.clone()
    if X0 is not None:
        R -= A(X)
        products += k
        colprod += 1
    iters = torch.zeros(k, dtype=torch.long, device=B.device)
    converged = _colnorm(R) <= tol  # includes b = 0 with x = 0
    Z = M(R)
    Pd = Z.clone()
    rz = (R * Z).sum(0)
    restarts = 0
    history: list[float] = []
    it = 0
    while True:
        active = (~converged).nonzero().flatten()
        active = active[iters[active] < max_iter]
        if len(active) == 0:
            break
        it += 1
        p = Pd[:, active]
        Ap = A(p)
        products += len(active)
        colprod[active] += 1
        pAp = (p * Ap).sum(0)
        if not bool((pAp > 0).all()):
            raise ValueError("operator is not positive definite (p^T A p <= 0 in CG)")
        alpha = rz[active] / pAp
        X[:, active] += alpha * p
        R[:, active] -= alpha * Ap
        iters[active] += 1
        rn = _colnorm(R[:, active])
        rel = rn / bnorm[active]
        history.append(float(rel.max()))
        if callback is not None:
            callback(it, rel)
        # candidates: recursive residual says done -> verify with the true residual
        cand = active[rn <= tol[active]]
        if len(cand):
            Rt = B[:, cand] - A(X[:, cand])
            products += len(cand)
            colprod[cand] += 1
            ok = _colnorm(Rt) <= tol[cand]
            converged[cand[ok]] = True
            R[:, cand] = Rt
            bad = cand[~ok]
            if len(bad):  # recurrence drifted: restart those columns from the true residual
                restarts += len(bad)
                Zb = M(R[:, bad])
                Pd[:, bad] = Zb
                rz[bad] = (R[:, bad] * Zb).sum(0)
        cont = active[~converged[active]]
        cont = cont[~torch.isin(cont, cand)] if len(cand) else cont
        if len(cont):
            Zc = M(R[:, cont])
            rz_new = (R[:, cont] * Zc).sum(0)
            beta = rz_new / rz[cont]
            Pd[:, cont] = Zc + beta * Pd[:, cont]
            rz[cont] = rz_new
    # final true residual for every column still unverified (non-converged ones)
    todo = (~converged).nonzero().flatten()
    if len(todo):
        Rt = B[:, todo] - A(X[:, todo])
        products += len(todo)
        colprod[todo] += 1
        R[:, todo] = Rt
        converged[todo] = _colnorm(Rt) <= tol[todo]
    res = (_colnorm(R) / bnorm.clamp_min(torch.finfo(B.dtype).tiny)).where(bnorm > 0, 0.0)
    report = SolveReport(
        rtol=rtol,
        max_iter=max_iter,
        residuals=res.tolist(),
        iterations=iters.tolist(),
        converged=converged.tolist(),
        products=products,
        column_products=colprod.tolist(),
        restarts=restarts,
        seconds=time.perf_counter() - t0,
        history=history,
    )
    if warn and not report.all_converged:
        bad = [i for i, c in enumerate(report.converged) if not c]
        worst = max(report.residuals[i] for i in bad)
        warnings.warn(
            f"CG did not converge for {len(bad)} of {k} columns within {max_iter} iterations "
            f"(rtol {rtol:g}; worst relative residual {worst:.3g}; columns {bad[:10]})",
            ConvergenceWarning,
            stacklevel=2,
        )
    return (X[:, 0] if vec else X), report
