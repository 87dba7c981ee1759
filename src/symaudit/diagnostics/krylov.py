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
``block_cg`` solves the same systems by block CG: all columns share one Krylov space (each
iteration adds one search direction per active column), which cuts iterations when the right-hand
sides share the dominant eigen-directions, as loss gradients do; same stopping test and report.
Note: unlike GPyTorch (default tolerance 1 on the *mean* column residual) or pyDVL (stops at
||r|| < rtol^2 ||b||), rtol here is exactly the relative residual of each column.

Attainable accuracy. The residual r = b - A x is evaluated in the working precision (unit
roundoff u = eps/2). Its rounding error obeys ||fl(r) - r|| <= gamma_{n+1} (|| |A| || ||x|| +
||b||) (Higham, *Accuracy and Stability*, 2nd ed., eq. 3.11), which in practice -- errors that
accumulate like a random walk, Higham & Mary 2019 -- is of order

    a = eps (||A|| ||x|| / ||b|| + 1)          (relative to ||b||; at most eps (kappa + 1)),

and the true residual of CG stagnates at the same level (Greenbaum 1997, Sec. 7.3). Every
report records ``attainable`` = a per column (||A|| from the given eigenvalue bounds, else the
largest Rayleigh quotient the iteration met, a lower bound on ||A|| of its order) next to the
residual: a reported residual is accurate to about a, and an rtol below a cannot be met. Given
``eigenvalue_bounds`` the solvers warn (`PrecisionWarning`) before iterating when rtol is below
the worst case eps (kappa + 1).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

__all__ = [
    "ConvergenceWarning",
    "NystromPreconditioner",
    "PrecisionWarning",
    "SolveReport",
    "block_cg",
    "cg",
]

Operator = Callable[[torch.Tensor], torch.Tensor]


class ConvergenceWarning(UserWarning):
    """A Krylov solve stopped before reaching its requested tolerance."""


class PrecisionWarning(UserWarning):
    """The requested tolerance is below what the working precision can attain."""


@dataclass
class SolveReport:
    """Per-column outcome of a batched solve (lists of length k)."""

    rtol: float
    max_iter: int
    residuals: list[float]  # true relative residual ||A x - b|| / ||b|| reached
    iterations: list[int]
    converged: list[bool]
    products: int  # column products with A, including residual checks
    # the same, per column (block CG shares each block product equally among active columns)
    column_products: list[float] = field(default_factory=list)
    restarts: int = 0  # columns restarted because the recursive residual had drifted
    seconds: float = 0.0
    history: list[float] = field(default_factory=list)  # max active relative residual per iter
    # eps (||A|| ||x|| / ||b|| + 1) per column: the accuracy of each residual (module docstring)
    attainable: list[float] = field(default_factory=list)
    operator_norm: float = 0.0  # the ||A|| used for `attainable`
    eps: float = 0.0  # machine epsilon of the working precision

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
            products=round(sum(cp)),
            column_products=cp,
            restarts=self.restarts,
            seconds=self.seconds,
            history=self.history,
            attainable=[self.attainable[i] for i in columns],
            operator_norm=self.operator_norm,
            eps=self.eps,
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
            attainable=[a for rep in reports for a in rep.attainable],
            operator_norm=max(rep.operator_norm for rep in reports),
            eps=reports[0].eps,
        )


class NystromPreconditioner:
    """Randomized Nyström preconditioner for A = eta + mu I (Frangella, Tropp & Udell 2023,
    "Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl. 44(2), Alg. 2.1 + eq. 5.3).

    With a rank-l approximation eta ~ U diag(lam) U^T (U: `(P, l)` orthonormal, lam descending),

        P^{-1} = (lam_l + mu) U diag(1 / (lam + mu)) U^T + (I - U U^T).

    Built from block products Y = eta Omega with a Gaussian test matrix Omega `(P, l)`. The
    approximation Y (Omega^T Y)^+ Y^T depends only on span(Omega), so Omega is not
    orthonormalised (no P x l QR) and the sketch can be ``extend``-ed by more columns at the
    cost of those columns' products alone. Stabilised by a shift nu = eps * sqrt(P) * ||Y||_F
    (a Nyström sketch of eta + nu I, then nu subtracted); all l x l algebra is float64, and the
    P x l Gram matrices are accumulated in float64 over row chunks (memory: Omega, Y, U in the
    sketch dtype).

    Args:
        eta: the PSD part, applied to `(P, l)` blocks (the damping is *not* included).
        num_params: P.  rank: initial l.  mu: the damping lambda (`damped` gives the
        preconditioner of another damping from the same sketch: it does not depend on mu).
        dtype/device: of the sketch.  seed: of Omega.
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
        self._eta = eta
        self._dtype = dtype
        self._device = device
        self._gen = torch.Generator(device="cpu").manual_seed(seed)
        self.num_params = num_params
        self.mu = float(mu)
        self.products = 0
        self.seconds = 0.0
        self._omega = torch.empty(num_params, 0, dtype=dtype, device=device)
        self._Y = torch.empty_like(self._omega)
        self.extend(rank)

    @classmethod
    def from_operator(cls, op, rank: int, *, seed: int = 0) -> NystromPreconditioner:
        """The sketch of a PSD operator (`symaudit.diagnostics._operator`: shape, dtype,
        device, matmat), for mu = 0 until `damped` gives it a damping."""
        return cls(op.matmat, op.shape[0], rank, 0.0, dtype=op.dtype, device=op.device, seed=seed)

    def damped(self, mu: float) -> NystromPreconditioner:
        """The preconditioner of eta + mu I from the same sketch (which does not depend on
        mu): a new object sharing U and the eigenvalues, this one unchanged."""
        new = copy.copy(self)
        new.mu = float(mu)
        return new

    def extend(self, extra: int) -> None:
        """Add ``extra`` test vectors (``extra`` more products with eta) and refactor."""
        if self._omega is None:
            raise RuntimeError("the sketch was released; it can no longer be extended")
        if not 0 < extra <= self.num_params - self.sketch_size:
            raise ValueError(
                f"can add 1..{self.num_params - self.sketch_size} columns, got {extra}"
            )
        t0 = time.perf_counter()
        # drawn column by column, so extending by a then b columns equals drawing a + b at once
        om = torch.randn(extra, self.num_params, generator=self._gen, dtype=torch.float64).T
        om = (om / self.num_params**0.5).to(device=self._device, dtype=self._dtype)
        Y = self._eta(om).to(self._dtype)
        self.products += extra
        self._omega = torch.cat([self._omega, om], 1)
        self._Y = torch.cat([self._Y, Y], 1)
        self._factor()
        self.seconds += time.perf_counter() - t0

    @property
    def sketch_size(self) -> int:
        """Test vectors drawn so far (= products with eta spent on the sketch)."""
        return self.products

    def release(self) -> None:
        """Drop the test matrix and the raw sketch (keeps U and the eigenvalues)."""
        self._omega = self._Y = None

    def _factor(self, chunk: int = 1 << 18) -> None:
        om, Y = self._omega, self._Y
        l = om.shape[1]
        eps = torch.finfo(self._dtype).eps
        nu = eps * self.num_params**0.5 * float(Y.norm())  # a scale: Y's dtype suffices
        nu = max(nu, torch.finfo(torch.float64).tiny)

        # (eta + nu I) Omega = Yn = Y + nu Omega;  M = Omega^T Yn = C C^T;  B = Yn C^{-T}
        # (triangular solves per row chunk: backward stable, unlike an explicit C^{-1});
        # B^T B = V S^2 V^T;  U = B V / S.  Rows of B are independent, so chunks bound memory.
        def rows(i: int) -> torch.Tensor:
            return Y[i : i + chunk].double() + nu * om[i : i + chunk].double()

        M = torch.zeros(l, l, dtype=torch.float64, device=om.device)
        for i in range(0, self.num_params, chunk):
            M += om[i : i + chunk].double().T @ rows(i)
        M = 0.5 * (M + M.T)
        C, info = torch.linalg.cholesky_ex(M)
        if int(info) == 0:

            def bmat(i: int) -> torch.Tensor:
                return torch.linalg.solve_triangular(C, rows(i).T, upper=False).T

        else:  # singular Omega^T Yn: pseudo-inverse square root via an eigendecomposition
            w, Q = torch.linalg.eigh(M)
            keep = w > w.max() * l * torch.finfo(torch.float64).eps
            Ri = Q[:, keep] / w[keep].sqrt()

            def bmat(i: int) -> torch.Tensor:
                return rows(i) @ Ri

        G = sum(bc.T @ bc for bc in map(bmat, range(0, self.num_params, chunk)))
        S2, V = torch.linalg.eigh(0.5 * (G + G.T))
        S2, V = S2.flip(0), V.flip(1)  # descending
        # Yn has full column rank (S^2 >= ~nu); only a numerically singular sketch loses columns
        keep = S2 > 1e-3 * nu
        S2, T = S2[keep], V[:, keep] / S2[keep].sqrt()
        U = torch.empty(self.num_params, T.shape[1], dtype=self._dtype, device=om.device)
        for i in range(0, self.num_params, chunk):
            U[i : i + chunk] = (bmat(i) @ T).to(self._dtype)
        self.U = U
        self.eigenvalues = (S2 - nu).clamp_min(0.0)  # descending
        self.rank = U.shape[1]

    @property
    def top_eigenvalue(self) -> float:
        """Largest eigenvalue of the approximation (a lower bound on eta's)."""
        return float(self.eigenvalues[0])

    @property
    def smallest_eigenvalue(self) -> float:
        """The l-th eigenvalue of the approximation: the preconditioned spectrum lies roughly
        in [1, 1 + (that + error) / mu]."""
        return float(self.eigenvalues[-1])

    def __call__(self, R: torch.Tensor) -> torch.Tensor:
        lam = self.eigenvalues.to(device=R.device, dtype=R.dtype)
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
    eigenvalue_bounds: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, SolveReport]:
    """Solve A X = B column by column with batched products.

    Args:
        A: symmetric positive-definite operator on `(P, m)` blocks: a callable, e.g.
            ``Damped(op, lambda)`` (`symaudit.diagnostics._operator`).
        B: right-hand sides `(P, k)` (or `(P,)`).
        rtol: each column stops when ||A x - b|| <= rtol ||b|| (true residual).
        max_iter: CG iterations per column (residual checks not counted).
        preconditioner: SPD operator approximating A^{-1}, on `(P, m)` blocks.
        X0: initial guess (default zero).
        callback: called as ``callback(iteration, relative_residuals)`` after each iteration.
        eigenvalue_bounds: (a lower bound on A's smallest eigenvalue, an estimate of its
            largest), e.g. (lambda, lambda_max(eta) + lambda): enables the up-front
            `PrecisionWarning` and sets the ||A|| of ``attainable`` (module docstring).

    Returns: X `(P, k)` and a `SolveReport`.
    """
    vec = B.ndim == 1
    B, M, bnorm, tol = _prepare(B, rtol, max_iter, preconditioner, eigenvalue_bounds)
    ritz = _RayleighMax(eigenvalue_bounds)
    t0 = time.perf_counter()
    P, k = B.shape
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
        ritz.update(pAp / (p * p).sum(0))
        alpha = rz[active] / pAp
        X[:, active] += alpha * p
        R[:, active] -= alpha * Ap
        cand, ok, rel = _end_of_step(
            A, B, X, R, active, bnorm, tol, iters, converged, colprod, history
        )
        products += len(cand)
        if callback is not None:
            callback(it, rel)
        if len(cand):
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
    report = _final_report(A, B, X, R, bnorm, rtol, max_iter, converged, iters, colprod, products)
    report.restarts, report.history = restarts, history
    _attach_accuracy(report, X, bnorm, ritz.value)
    report.seconds = time.perf_counter() - t0
    if warn and not report.all_converged:
        _warn_unconverged(report, "CG")
    return (X[:, 0] if vec else X), report


def _orthonormalize(P: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of span(P) by SVQB (Stathopoulos & Wu 2002), twice: eigh of the
    float64 Gram matrix, dropping numerically dependent directions (rank-revealing, so equal or
    zero right-hand sides cannot break block CG)."""
    for _ in range(2):
        G = (P.T @ P).double()
        w, V = torch.linalg.eigh(0.5 * (G + G.T))
        keep = w > w.max().clamp_min(0) * P.shape[1] * torch.finfo(P.dtype).eps
        P = P @ (V[:, keep] / w[keep].sqrt()).to(P.dtype)
    return P


def block_cg(
    A: Operator,
    B: torch.Tensor,
    *,
    rtol: float = 5e-3,
    max_iter: int = 500,
    preconditioner: Operator | None = None,
    warn: bool = True,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    eigenvalue_bounds: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, SolveReport]:
    """Solve A X = B by preconditioned block CG with variable block size.

    Every iteration makes one product per search direction (at most one per active column)
    and updates each active column with the Galerkin step over the whole block
    (alpha = (P^T A P)^{-1} P^T R, O'Leary 1980); directions are re-orthonormalised each step
    (breakdown-free: dependent directions are dropped). A column leaves the block once its
    *true* residual ||A x - b|| <= rtol ||b|| is verified (one product), exactly as in `cg`;
    its solution is then frozen. Arguments and the returned `SolveReport` are those of `cg`
    (``column_products`` shares each block product equally among the active columns).
    """
    vec = B.ndim == 1
    B, M, bnorm, tol = _prepare(B, rtol, max_iter, preconditioner, eigenvalue_bounds)
    ritz = _RayleighMax(eigenvalue_bounds)
    t0 = time.perf_counter()
    k = B.shape[1]
    products = 0
    colprod = torch.zeros(k, dtype=torch.float64)
    X = torch.zeros_like(B)
    R = B.clone()
    iters = torch.zeros(k, dtype=torch.long, device=B.device)
    converged = _colnorm(R) <= tol
    restarts = 0
    history: list[float] = []
    active = (~converged).nonzero().flatten()
    D = _orthonormalize(M(R[:, active])) if len(active) else None
    it = 0
    while len(active) and it < max_iter:
        it += 1
        AD = A(D)
        products += D.shape[1]
        colprod[active.cpu()] += D.shape[1] / len(active)
        DAD = (D.T @ AD).double()
        DAD = 0.5 * (DAD + DAD.T)
        L, info = torch.linalg.cholesky_ex(DAD)
        if int(info) != 0:
            raise ValueError("operator is not positive definite (P^T A P not SPD in block CG)")
        ritz.update(torch.linalg.eigvalsh(DAD)[-1:])  # D is orthonormal: Ritz values of A
        alpha = torch.cholesky_solve((D.T @ R[:, active]).double(), L).to(B.dtype)
        X[:, active] += D @ alpha
        R[:, active] -= AD @ alpha
        cand, ok, rel = _end_of_step(
            A, B, X, R, active, bnorm, tol, iters, converged, colprod, history
        )
        products += len(cand)
        restarts += int((~ok).sum())  # drifted: carry on from the true residual
        if callback is not None:
            callback(it, rel)
        active = active[~converged[active]]
        if not len(active):
            break
        Z = M(R[:, active])
        beta = torch.cholesky_solve((AD.T @ Z).double(), L).to(B.dtype)
        D = _orthonormalize(Z - D @ beta)
    report = _final_report(A, B, X, R, bnorm, rtol, max_iter, converged, iters, colprod, products)
    report.restarts, report.history = restarts, history
    _attach_accuracy(report, X, bnorm, ritz.value)
    report.seconds = time.perf_counter() - t0
    if warn and not report.all_converged:
        _warn_unconverged(report, "block CG")
    return (X[:, 0] if vec else X), report


def _end_of_step(A, B, X, R, active, bnorm, tol, iters, converged, colprod, history) -> tuple:
    """Count the iteration of the ``active`` columns; those whose recursive residual says done
    get their true residual recomputed into R (one product each) and are marked converged if
    it is within tol. Returns (candidates, their within-tol mask, the active columns' recursive
    relative residuals)."""
    iters[active] += 1
    rn = _colnorm(R[:, active])
    rel = rn / bnorm[active]
    history.append(float(rel.max()))
    cand = active[rn <= tol[active]]
    if not len(cand):
        return cand, torch.zeros(0, dtype=torch.bool, device=cand.device), rel
    Rt = B[:, cand] - A(X[:, cand])
    colprod[cand.to(colprod.device)] += 1
    ok = _colnorm(Rt) <= tol[cand]
    converged[cand[ok]] = True
    R[:, cand] = Rt
    return cand, ok, rel


def _final_report(
    A, B, X, R, bnorm, rtol, max_iter, converged, iters, colprod, products
) -> SolveReport:
    """Verify the true residual of every column not yet verified (the unconverged ones; one
    product each) and report every column's true relative residual. Updates R in place."""
    todo = (~converged).nonzero().flatten()
    if len(todo):
        Rt = B[:, todo] - A(X[:, todo])
        products += len(todo)
        colprod[todo.to(colprod.device)] += 1
        R[:, todo] = Rt
        converged[todo] = _colnorm(Rt) <= rtol * bnorm[todo]
    res = (_colnorm(R) / bnorm.clamp_min(torch.finfo(B.dtype).tiny)).where(bnorm > 0, 0.0)
    return SolveReport(
        rtol=rtol,
        max_iter=max_iter,
        residuals=res.tolist(),
        iterations=iters.tolist(),
        converged=converged.tolist(),
        products=products,
        column_products=colprod.tolist(),
    )


class _RayleighMax:
    """||A|| for the attainable accuracy: the given estimate, else the largest Rayleigh
    quotient of A met by the iteration (a lower bound on lambda_max, no extra products)."""

    def __init__(self, bounds: tuple[float, float] | None) -> None:
        self.value = float(bounds[1]) if bounds is not None else 0.0

    def update(self, quotients: torch.Tensor) -> None:
        if len(quotients):
            self.value = max(self.value, float(quotients.max()))


def _attach_accuracy(report: SolveReport, X: torch.Tensor, bnorm: torch.Tensor, norm: float):
    """Record eps (||A|| ||x|| / ||b|| + 1) per column (module docstring)."""
    eps = torch.finfo(X.dtype).eps
    ratio = (_colnorm(X).double() / bnorm.double().clamp_min(1e-300)).where(bnorm > 0, 0.0)
    report.attainable = (eps * (norm * ratio + 1.0)).tolist()
    report.operator_norm, report.eps = norm, eps


def _prepare(
    B: torch.Tensor,
    rtol: float,
    max_iter: int,
    preconditioner: Operator | None,
    eigenvalue_bounds: tuple[float, float] | None = None,
):
    """Check the arguments every solver shares; return B as a `(P, k)` block, the
    preconditioner (identity if None), the column norms of B and the absolute tolerances."""
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    B = B.reshape(B.shape[0], -1)
    if not torch.isfinite(B).all():
        raise ValueError("right-hand sides contain NaN/inf")
    if eigenvalue_bounds is not None:
        _warn_if_unattainable(rtol, eigenvalue_bounds, B.dtype)
    M = preconditioner if preconditioner is not None else (lambda R: R)
    bnorm = _colnorm(B)
    return B, M, bnorm, rtol * bnorm


def _warn_if_unattainable(rtol: float, bounds: tuple[float, float], dtype: torch.dtype) -> None:
    lo, hi = (float(b) for b in bounds)
    if not 0 < lo <= hi < float("inf"):
        raise ValueError(f"eigenvalue_bounds must satisfy 0 < low <= high < inf, got {bounds}")
    worst = torch.finfo(dtype).eps * (hi / lo + 1.0)
    if rtol < worst:
        warnings.warn(
            f"rtol {rtol:g} is below the worst-case attainable accuracy eps (kappa + 1) = "
            f"{worst:.2g} of {dtype} for this operator (kappa <= {hi / lo:.3g}): columns may "
            "stagnate above rtol; use float64 or a larger damping",
            PrecisionWarning,
            stacklevel=4,
        )


def _warn_unconverged(report: SolveReport, what: str) -> None:
    bad = [i for i, c in enumerate(report.converged) if not c]
    worst = max(report.residuals[i] for i in bad)
    floor = max(report.attainable[i] for i in bad)
    why = (
        f"; rtol is below the attainable accuracy ~{floor:.2g} of this precision"
        if floor >= report.rtol
        else ""
    )
    warnings.warn(
        f"{what} did not converge for {len(bad)} of {len(report.converged)} columns within "
        f"{report.max_iter} iterations (rtol {report.rtol:g}; worst relative residual {worst:.3g}; "
        f"columns {bad[:10]}{why})",
        ConvergenceWarning,
        stacklevel=3,
    )
