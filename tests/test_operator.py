"""The operator layer: Damped, the free spectrum functions, the Nyström sketch of an operator,
and a foreign operator (curvlinops' GGN) solved through the same protocol as ours."""

import pytest
import torch

from _tiny_models import batch, loss, make
from symaudit.diagnostics._operator import (
    Damped,
    DenseOperator,
    SymmetricOperator,
    as_operator,
    hutchinson_trace,
    top_eigenvalue,
)
from symaudit.diagnostics.krylov import NystromPreconditioner, block_cg, cg
from symaudit.diagnostics.metric import MetricOperator, _eval_math_attention, dense_eta


def _spd(n: int, eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    return (Q * eigenvalues) @ Q.T


def test_damped_adds_lambda_and_mutates_nothing():
    A = _spd(30, torch.linspace(0.1, 3.0, 30, dtype=torch.float64))
    op = DenseOperator(A)
    V = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a, b = Damped(op, 0.5), Damped(op, 2.0)
    # exact: the same floating-point operations as A @ V + lam * V
    assert torch.equal(a.matmat(V), A @ V + 0.5 * V)
    assert torch.equal(b(V), A @ V + 2.0 * V)
    assert a.damping == 0.5 and a.shape == (30, 30) and isinstance(a, SymmetricOperator)
    with pytest.raises(ValueError, match="damping"):
        Damped(op, -1.0)
    with pytest.raises(ValueError, match="damping"):
        Damped(op, float("inf"))


def test_metric_operator_is_eta_and_its_damped_form_is_chi():
    model, lossfn, xb = make("conv"), loss(), batch(2)
    op = MetricOperator(model, lossfn, xb, damping=0.05)
    V = torch.randn(op.num_params, 3, dtype=torch.float64)
    assert op.shape == (op.num_params, op.num_params)
    assert torch.equal(op.matmat(V), op.eta(V))
    assert torch.equal(Damped(op, 0.05).matmat(V), op(V))  # chi, bit for bit
    with pytest.raises(ValueError, match="damping"):
        MetricOperator(model, lossfn, xb, damping=-1.0)


def test_top_eigenvalue_and_hutchinson_trace():
    lam = torch.cat([torch.tensor([10.0]), torch.linspace(0.1, 1.0, 49)]).double()
    op = DenseOperator(_spd(50, lam))
    # gap 10 : 1 -> the Rayleigh quotient converges like (1/10)^(2k): rtol 1e-10 is reached
    # in a handful of iterations and bounds the error (the quotient is below lambda_max)
    top = top_eigenvalue(op, iters=100, rtol=1e-10)
    assert top == pytest.approx(10.0, rel=1e-9)
    # warm start from the exact eigenvector: the first quotient is lambda_max to rounding
    v = torch.linalg.eigh(op.matrix).eigenvectors[:, -1]
    assert top_eigenvalue(op, iters=1, start=v) == pytest.approx(10.0, rel=1e-12)
    # Rademacher probes on a diagonal matrix: z^T D z = tr(D) exactly, zero standard error
    diag = DenseOperator(torch.diag(lam))
    est, err = hutchinson_trace(diag, 16)
    assert est == pytest.approx(float(lam.sum()), rel=1e-14) and err == pytest.approx(0, abs=1e-12)
    # unbiased in general: within 5 standard errors of the trace
    est, err = hutchinson_trace(op, 256, seed=3)
    assert abs(est - float(lam.sum())) <= 5 * err


def test_metric_trace_uses_its_cheap_quadratic_form():
    """hutchinson_trace via the metric's J v quadratic form equals the generic v^T (eta v)."""
    model, lossfn, xb = make("conv"), loss(), batch(2)
    op = MetricOperator(model, lossfn, xb)
    fast, _ = hutchinson_trace(op, 8, seed=2)
    slow, _ = hutchinson_trace(DenseOperator(dense_eta(op)), 8, seed=2)
    assert fast == pytest.approx(slow, rel=1e-10)  # same probes, two exact evaluations


def test_nystrom_sketch_of_an_operator_is_damped_without_mutation():
    A = _spd(120, 1.0 / torch.arange(1, 121, dtype=torch.float64))
    op = DenseOperator(A)
    sketch = NystromPreconditioner.from_operator(op, 20, seed=4)
    direct = NystromPreconditioner(lambda V: A @ V, 120, 20, 1e-3, seed=4)
    damped = sketch.damped(1e-3)
    assert sketch.mu == 0.0 and damped.mu == 1e-3  # the original is untouched
    R = torch.randn(120, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(damped(R), direct(R))


@pytest.mark.parametrize("solver", [cg, block_cg])
def test_curvlinops_ggn_plugs_into_our_solvers(solver):
    """curvlinops' GGNLinearOperator, adapted by `as_operator`, damped by `Damped` and solved
    by our CG: the same solution as with our metric operator and a dense solve."""
    curvlinops = pytest.importorskip("curvlinops")
    model, lossfn, xb = make("conv"), loss(), batch(2)
    ours = MetricOperator(model, lossfn, xb)
    params = [p for p in model.parameters() if p.requires_grad]
    with _eval_math_attention(model):
        ggn = as_operator(
            curvlinops.GGNLinearOperator(model, lossfn, params, [xb], check_deterministic=False)
        )
        assert ggn.shape == ours.shape and ggn.dtype == ours.dtype
        lam = 1e-2 * top_eigenvalue(ggn, iters=50)
        B = torch.randn(ours.num_params, 3, dtype=torch.float64)
        pre = NystromPreconditioner.from_operator(ggn, 16).damped(lam)
        X, rep = solver(Damped(ggn, lam), B, rtol=1e-8, max_iter=500, preconditioner=pre)
    Y, _ = solver(Damped(ours, lam), B, rtol=1e-8, max_iter=500)
    chi = dense_eta(ours) + lam * torch.eye(ours.num_params, dtype=torch.float64)
    exact = torch.linalg.solve(chi, B)
    # kappa(chi) <= 101 (lambda = 1e-2 lambda_max): a residual of 1e-8 bounds the relative
    # error by 1e-6; float64 rounding is far below
    assert rep.all_converged
    assert torch.linalg.norm(X - exact) <= 1e-6 * torch.linalg.norm(exact)
    assert torch.linalg.norm(Y - exact) <= 1e-6 * torch.linalg.norm(exact)


def test_as_operator_rejects_non_operators():
    with pytest.raises(TypeError, match="not an operator"):
        as_operator(lambda v: v)
