"""Batched preconditioned CG and the Nyström preconditioner on dense SPD matrices."""

import warnings

import pytest
import torch

from symaudit.diagnostics.krylov import (
    ConvergenceWarning,
    NystromPreconditioner,
    PrecisionWarning,
    block_cg,
    cg,
)


def _spd(n: int, decay: float, mu: float, seed: int = 0, rank: int | None = None):
    """Q diag(lam) Q^T + mu I with lam_i = decay^i (optionally only `rank` nonzero)."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    lam = decay ** torch.arange(n, dtype=torch.float64)
    if rank is not None:
        lam[rank:] = 0
    eta = (Q * lam) @ Q.T
    eta = 0.5 * (eta + eta.T)
    return eta, eta + mu * torch.eye(n, dtype=torch.float64), lam


def _true_rel_res(A, X, B):
    return (A @ X - B).norm(dim=0) / B.norm(dim=0)


def test_each_column_reaches_its_true_relative_residual():
    _, A, _ = _spd(200, 0.95, 1e-3)
    B = torch.randn(200, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    B[:, 2] *= 1e4  # very different scales must not share a stopping test
    X, rep = cg(lambda V: A @ V, B, rtol=1e-4, max_iter=1000)
    true = _true_rel_res(A, X, B)
    assert rep.all_converged
    assert (true <= 1e-4).all()
    assert torch.allclose(torch.tensor(rep.residuals, dtype=torch.float64), true, rtol=1e-6)
    Xs = torch.linalg.solve(A, B)
    # error bound from the residual: ||x - x*|| <= ||A^{-1}|| ||r||
    assert ((X - Xs).norm(dim=0) <= (A @ X - B).norm(dim=0) / 1e-3 * 1.001).all()


def test_each_column_stops_on_its_own():
    """Own alpha/beta and own stopping test per column (not block CG): an eigenvector column
    converges in one step while the others go on; a column solved alone matches."""
    _, A, _ = _spd(120, 0.9, 1e-2, seed=2)
    B = torch.randn(120, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    B[:, 0] = torch.linalg.eigh(A).eigenvectors[:, -1]
    X, rep = cg(lambda V: A @ V, B, rtol=1e-6, max_iter=500)
    assert rep.iterations[0] == 1 and min(rep.iterations[1:]) > 10
    lam_min = float(torch.linalg.eigvalsh(A)[0])
    for j in range(1, 4):
        xj, rj = cg(lambda V: A @ V, B[:, j], rtol=1e-6, max_iter=500)
        assert abs(rj.iterations[0] - rep.iterations[j]) <= 1  # rounding may shift one step
        # both within ||A^-1|| rtol ||b|| of the exact solution (a step more or less included)
        bound = 2 * 1e-6 * float(B[:, j].norm()) / lam_min
        assert float((xj - X[:, j]).norm()) <= bound


def test_non_convergence_is_loud_and_recorded():
    _, A, _ = _spd(200, 0.97, 1e-4)
    B = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with pytest.warns(ConvergenceWarning, match="did not converge for 3 of 3 columns"):
        X, rep = cg(lambda V: A @ V, B, rtol=1e-6, max_iter=2)
    assert rep.converged == [False] * 3
    assert rep.iterations == [2, 2, 2]
    assert torch.allclose(
        torch.tensor(rep.residuals, dtype=torch.float64), _true_rel_res(A, X, B), rtol=1e-8
    )
    assert min(rep.residuals) > 1e-6


def _columnwise(A: torch.Tensor):
    """A as an operator whose product with each column does not depend on the block it is in
    (one matrix-vector product per column), so a test can redo the solver's arithmetic."""
    return lambda V: torch.stack([A @ v for v in V.T], 1)


def test_drifted_recurrence_is_caught_by_the_true_residual():
    """All in float32 at rtol 1e-6, below what float32 attains at condition number 1e3: the
    recursive residual falls below rtol while the true one does not. Such columns are
    restarted, not declared converged, and the reported residual is the true one, b - A x
    evaluated in float32; it differs from the float64 truth by no more than the attainable
    accuracy eps (||A|| ||x|| / ||b|| + 1) the report records (krylov module docstring)."""
    _, A, lam = _spd(100, 0.9, 1e-3, seed=5)
    B = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    A32, B32 = A.float(), B.float()
    with pytest.warns(ConvergenceWarning, match="below the attainable accuracy"):
        X, rep = cg(_columnwise(A32), B32, rtol=1e-6, max_iter=300)
    assert rep.converged == [False, False]
    assert rep.restarts > 0  # the recursive estimate claimed convergence and was overruled
    reported = torch.tensor(rep.residuals, dtype=torch.float64)
    # (1) the true residual in the working precision: the same float32 operations as the
    # solver's, up to the summation order of the norms (relative error <= gamma_n ~ n eps)
    f32 = ((B32 - _columnwise(A32)(X)).norm(dim=0) / B32.norm(dim=0)).double()
    assert torch.allclose(reported, f32, rtol=2 * 100 * torch.finfo(torch.float32).eps, atol=0)
    # (2) within the recorded attainable accuracy of the float64 truth
    true = _true_rel_res(A, X.double(), B)
    attainable = torch.tensor(rep.attainable, dtype=torch.float64)
    assert (true > 1e-6).all() and (reported > 1e-6).all()
    assert ((reported - true).abs() <= attainable).all()
    # the attainable accuracy the report states is the estimate eps (||A|| ||x|| / ||b|| + 1)
    # with ||A|| the largest Rayleigh quotient CG met: a lower bound on lambda_max (up to the
    # float32 rounding of a quotient, a few eps), of its order
    eps = torch.finfo(torch.float32).eps
    lmax = float(lam[0] + 1e-3)
    assert 0.5 * lmax <= rep.operator_norm <= lmax * (1 + 100 * eps)
    ratio = X.double().norm(dim=0) / B32.double().norm(dim=0)
    assert torch.allclose(attainable, eps * (rep.operator_norm * ratio + 1), rtol=1e-6)
    # and it lies below the worst case eps (kappa + 1)
    assert (attainable <= eps * (lmax / 1e-3 + 1)).all()


def test_precision_warning_before_an_unattainable_solve():
    """Given eigenvalue bounds, an rtol below eps (kappa + 1) is flagged before iterating; the
    same request in float64 (or a reachable rtol in float32) is not."""
    _, A, lam = _spd(60, 0.8, 1e-3, seed=16)
    B = torch.randn(60, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(17))
    bounds = (1e-3, float(lam[0]) + 1e-3)  # kappa ~ 1e3: float32 attains ~1.2e-4 at worst
    A32 = A.float()
    for solver in (cg, block_cg):
        with pytest.warns(PrecisionWarning, match="below the worst-case attainable"):
            solver(lambda V: A32 @ V, B.float(), rtol=1e-6, eigenvalue_bounds=bounds, warn=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, rep = solver(lambda V: A @ V, B, rtol=1e-6, eigenvalue_bounds=bounds)
            solver(lambda V: A32 @ V, B.float(), rtol=5e-3, eigenvalue_bounds=bounds)
        assert rep.operator_norm == bounds[1] and rep.eps == torch.finfo(torch.float64).eps
        with pytest.raises(ValueError, match="eigenvalue_bounds"):
            solver(lambda V: A @ V, B, eigenvalue_bounds=(0.0, 1.0))


def test_zero_rhs_and_bad_arguments():
    _, A, _ = _spd(30, 0.8, 1e-2)
    B = torch.randn(30, 2, dtype=torch.float64)
    B[:, 1] = 0
    X, rep = cg(lambda V: A @ V, B, rtol=1e-8)
    assert rep.converged == [True, True] and (X[:, 1] == 0).all()
    with pytest.raises(ValueError, match="rtol"):
        cg(lambda V: A @ V, B, rtol=0)
    with pytest.raises(ValueError, match="max_iter"):
        cg(lambda V: A @ V, B, max_iter=0)
    B[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cg(lambda V: A @ V, B)
    with pytest.raises(ValueError, match="positive definite"):
        cg(lambda V: -(A @ V), torch.randn(30, 1, dtype=torch.float64))


def test_nystrom_exact_for_low_rank_metric():
    """eta of rank 10 sketched with rank 20: P^{-1} chi = mu I, so PCG needs one iteration."""
    mu = 1e-3
    eta, A, lam = _spd(300, 0.5, mu, rank=10)
    pc = NystromPreconditioner(lambda V: eta @ V, 300, 20, mu)
    assert torch.allclose(pc.eigenvalues[:10], lam[:10], rtol=1e-8)
    assert (pc.eigenvalues[10:] <= 1e-10).all()
    B = torch.randn(300, 4, dtype=torch.float64)
    X, rep = cg(lambda V: A @ V, B, rtol=1e-8, preconditioner=pc)
    assert rep.all_converged and max(rep.iterations) == 1
    Pinv_A = pc(A)
    assert torch.allclose(Pinv_A, mu * torch.eye(300, dtype=torch.float64), atol=1e-9)


def test_nystrom_cuts_iterations_on_a_decaying_spectrum():
    mu = 1e-6
    eta, A, lam = _spd(400, 0.9, mu, seed=7)
    B = torch.randn(400, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    _, plain = cg(lambda V: A @ V, B, rtol=5e-3, max_iter=2000)
    pc = NystromPreconditioner(lambda V: eta @ V, 400, 100, mu, seed=1)
    # the sketch captures the top of the spectrum
    assert torch.allclose(pc.eigenvalues[:10], lam[:10], rtol=1e-3)
    X, pre = cg(lambda V: A @ V, B, rtol=5e-3, max_iter=2000, preconditioner=pc)
    assert plain.all_converged and pre.all_converged
    assert (_true_rel_res(A, X, B) <= 5e-3).all()
    assert max(pre.iterations) * 10 <= min(plain.iterations)
    # preconditioner is SPD
    M = pc(torch.eye(400, dtype=torch.float64))
    assert torch.allclose(M, M.T, atol=1e-12) and torch.linalg.eigvalsh(M).min() > 0


def test_no_warning_when_converged():
    _, A, _ = _spd(50, 0.8, 1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cg(lambda V: A @ V, torch.ones(50, 2, dtype=torch.float64), rtol=1e-6)


def test_block_cg_reaches_every_columns_true_residual_and_matches_dense():
    _, A, _ = _spd(300, 0.97, 1e-4, seed=9)
    B = torch.randn(300, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    B[:, 3] *= 1e5
    X, rep = block_cg(lambda V: A @ V, B, rtol=1e-6, max_iter=1000)
    true = _true_rel_res(A, X, B)
    assert rep.all_converged and (true <= 1e-6).all()
    assert torch.allclose(torch.tensor(rep.residuals, dtype=torch.float64), true, rtol=1e-6)
    Xs = torch.linalg.solve(A, B)
    assert ((X - Xs).norm(dim=0) <= (A @ X - B).norm(dim=0) / 1e-4 * 1.001).all()
    assert sum(rep.column_products) == pytest.approx(rep.products)


def test_block_cg_shares_the_krylov_space():
    """Right-hand sides sharing the dominant directions (like loss gradients): block CG needs
    far fewer iterations, and fewer products, than independent columns."""
    eta, A, lam = _spd(400, 0.95, 1e-5, seed=11)
    Q = torch.linalg.eigh(eta).eigenvectors.flip(1)
    g = torch.Generator().manual_seed(12)
    B = Q @ (torch.randn(400, 16, generator=g, dtype=torch.float64) * lam.sqrt().unsqueeze(1))
    _, plain = cg(lambda V: A @ V, B, rtol=5e-3, max_iter=2000)
    X, blk = block_cg(lambda V: A @ V, B, rtol=5e-3, max_iter=2000)
    assert blk.all_converged and (_true_rel_res(A, X, B) <= 5e-3).all()
    assert max(blk.iterations) * 2 <= min(plain.iterations)
    assert blk.products * 1.5 <= plain.products
    pc = NystromPreconditioner(lambda V: eta @ V, 400, 32, 1e-5, seed=2)
    Xp, pre = block_cg(lambda V: A @ V, B, rtol=5e-3, max_iter=2000, preconditioner=pc)
    assert pre.all_converged and (_true_rel_res(A, Xp, B) <= 5e-3).all()
    assert max(pre.iterations) < max(blk.iterations)


def test_block_cg_dependent_and_zero_columns():
    """Equal and zero right-hand sides make the block rank-deficient: no breakdown."""
    _, A, _ = _spd(100, 0.9, 1e-3, seed=13)
    b = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    B = torch.cat([b, b, 2 * b[:, :1], torch.zeros(100, 1, dtype=torch.float64)], 1)
    X, rep = block_cg(lambda V: A @ V, B, rtol=1e-8, max_iter=500)
    assert rep.all_converged and (X[:, 5] == 0).all()
    assert torch.allclose(X[:, 0], X[:, 2]) and torch.allclose(2 * X[:, 0], X[:, 4])
    assert (_true_rel_res(A, X[:, :5], B[:, :5]) <= 1e-8).all()


def test_block_cg_non_convergence_is_loud_and_recorded():
    _, A, _ = _spd(200, 0.97, 1e-4)
    B = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with pytest.warns(ConvergenceWarning, match="block CG did not converge for 3 of 3"):
        X, rep = block_cg(lambda V: A @ V, B, rtol=1e-9, max_iter=2)
    assert rep.converged == [False] * 3 and rep.iterations == [2, 2, 2]
    assert torch.allclose(
        torch.tensor(rep.residuals, dtype=torch.float64), _true_rel_res(A, X, B), rtol=1e-8
    )
    with pytest.raises(ValueError, match="positive definite"):
        block_cg(lambda V: -(A @ V), torch.randn(200, 2, dtype=torch.float64))


def test_nystrom_extend_equals_one_larger_sketch():
    """The sketch depends only on span(Omega): extending 16 -> 40 columns gives the rank-40
    sketch drawn from the same seed, at the cost of the 24 new products only."""
    eta, _, _ = _spd(200, 0.9, 0.0, seed=15)
    calls = []

    def op(V):
        calls.append(V.shape[1])
        return eta @ V

    grown = NystromPreconditioner(op, 200, 16, 1e-3, seed=3)
    grown.extend(24)
    once = NystromPreconditioner(lambda V: eta @ V, 200, 40, 1e-3, seed=3)
    assert calls == [16, 24] and grown.products == 40
    assert torch.allclose(grown.eigenvalues, once.eigenvalues, rtol=1e-9, atol=1e-14)
    Pg, Po = grown(torch.eye(200, dtype=torch.float64)), once(torch.eye(200, dtype=torch.float64))
    assert torch.allclose(Pg, Po, atol=1e-8)
