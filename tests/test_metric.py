"""The metric operator chi = J^T W J + lambda I against dense oracles and curvlinops."""

import pytest
import torch

from _tiny_models import (
    GRID,
    LAYOUT,
    batch,
    dense_jacobian,
    loss,
    make,
)
from symaudit.diagnostics.metric import MetricOperator, dense_eta

KINDS = ["unet", "vit", "gcnn"]


def _dense_eta_by_hand(op: MetricOperator, x: torch.Tensor) -> torch.Tensor:
    """eta = J^T W J with W = 2 / (n C H W) / rms_c^2 written out independently."""
    J = dense_jacobian(op, x)
    n, c, h, w = x.shape
    rms = op.loss.channel_rms.to(x.dtype)
    wdiag = (2.0 / (n * c * h * w) / rms**2).view(1, c, 1, 1).expand(n, c, h, w).reshape(-1)
    return J.T @ (wdiag[:, None] * J)


@pytest.mark.parametrize("kind", KINDS)
def test_operator_matches_dense_gauss_newton(kind):
    model, lossfn, xb = make(kind), loss(), batch(1, GRID[kind])
    op = MetricOperator(model, lossfn, xb, damping=0.05)
    E = _dense_eta_by_hand(op, xb[0])
    V = torch.randn(
        op.num_params, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    got = op(V)
    want = E @ V + 0.05 * V
    assert torch.linalg.norm(got - want) <= 1e-10 * torch.linalg.norm(want)
    # single vector and eta alone
    assert torch.allclose(op.eta(V[:, 0]), E @ V[:, 0], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["conv", "vit"])
def test_symmetric_positive_definite(kind):
    model, lossfn, xb = make(kind), loss(), batch(1, GRID[kind])
    lam = 1e-3
    op = MetricOperator(model, lossfn, xb, damping=lam)
    g = torch.Generator().manual_seed(1)
    U = torch.randn(op.num_params, 4, dtype=torch.float64, generator=g)
    V = torch.randn(op.num_params, 4, dtype=torch.float64, generator=g)
    assert torch.allclose(U.T @ op(V), (V.T @ op(U)).T, rtol=1e-10, atol=1e-12)
    # chi - 0.999 lambda I still has a Cholesky factor: every eigenvalue of chi is >= lambda
    eye = torch.eye(op.num_params, dtype=torch.float64)
    assert int(torch.linalg.cholesky_ex(dense_eta(op) + 1e-3 * lam * eye).info) == 0
    assert (torch.einsum("pk,pk->k", U, op(U)) > 0).all()


def test_float32_agrees_with_float64():
    m64, lossfn, xb = make("vit"), loss(), batch(2, GRID["vit"])
    m32 = make("vit", dtype=torch.float32)
    op64 = MetricOperator(m64, lossfn, xb, damping=0.01)
    op32 = MetricOperator(m32, lossfn, (xb[0].float(), xb[1].float()), damping=0.01)
    assert op32.dtype == torch.float32
    V = torch.randn(op64.num_params, 3, dtype=torch.float64)
    a, b = op64(V), op32(V.float()).double()
    # float32 rounding of weights, inputs and each layer's sums: relative error of order
    # (depth x a few) eps32 for this tiny, well-conditioned net (measured 2e-7 = 2 eps32 with
    # 1 and 2 threads); 1e-5 ~ 80 eps32 leaves room for any summation order
    assert torch.linalg.norm(a - b) <= 1e-5 * torch.linalg.norm(a)


def test_mean_weights_combine_batches_like_the_global_mean():
    """eta of batch A+B = (n_A eta_A + n_B eta_B) / (n_A + n_B): W uses the total count."""
    model, lossfn = make("conv"), loss()
    xa, xb_ = batch(1, seed=3), batch(3, seed=4)
    both = (torch.cat([xa[0], xb_[0]]), torch.cat([xa[1], xb_[1]]))
    P = sum(p.numel() for p in model.parameters())
    V = torch.randn(P, 2, dtype=torch.float64)
    ea = MetricOperator(model, lossfn, xa).eta(V)
    eb = MetricOperator(model, lossfn, xb_).eta(V)
    eab = MetricOperator(model, lossfn, both).eta(V)
    assert torch.allclose(eab, (1 * ea + 3 * eb) / 4, rtol=1e-10, atol=1e-14)
    # sharded view: each shard weighted with the global count sums to the full operator
    sa = MetricOperator(model, lossfn, xa, global_count=4).eta(V)
    sb = MetricOperator(model, lossfn, xb_, global_count=4).eta(V)
    assert torch.allclose(sa + sb, eab, rtol=1e-10, atol=1e-14)


def test_parameter_subset_is_the_dense_sub_block():
    model, lossfn, xb = make("conv"), loss(), batch(2)
    full = MetricOperator(model, lossfn, xb)
    sub = MetricOperator(model, lossfn, xb, params=["mid", "out.bias"])
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    idx, start = [], 0
    for n, s in zip(names, sizes, strict=True):
        if n.startswith("mid.") or n == "out.bias":
            idx.extend(range(start, start + s))
        start += s
    idx = torch.tensor(idx)
    assert sub.num_params == len(idx) < full.num_params
    E_full = dense_eta(full)
    assert torch.allclose(E_full, _dense_eta_by_hand(full, xb[0]), rtol=1e-10, atol=1e-14)
    E = E_full[idx][:, idx]
    V = torch.randn(sub.num_params, 3, dtype=torch.float64)
    assert torch.allclose(sub.eta(V), E @ V, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="no parameters under module prefix"):
        MetricOperator(model, lossfn, xb, params=["nonexistent"])


def test_spectrum_estimates():
    model, lossfn, xb = make("conv"), loss(), batch(2)
    op = MetricOperator(model, lossfn, xb)
    E = dense_eta(op)
    ev = torch.linalg.eigvalsh(E)
    assert op.top_eigenvalue(100, rtol=1e-6) == pytest.approx(float(ev[-1]), rel=1e-2)
    est, err = op.trace_estimate(64)
    assert abs(est - float(E.trace())) <= 5 * err


@pytest.mark.parametrize("kind", ["unet", "vit"])
def test_agrees_with_curvlinops_ggn(kind):
    curvlinops = pytest.importorskip("curvlinops")
    from symaudit.diagnostics.metric import _eval_math_attention

    model, lossfn, xb = make(kind), loss(), batch(2, GRID[kind])
    op = MetricOperator(model, lossfn, xb)
    params = [p for p in model.parameters() if p.requires_grad]
    V = torch.randn(op.num_params, 3, dtype=torch.float64)
    with _eval_math_attention(model):
        ggn = curvlinops.GGNLinearOperator(model, lossfn, params, [xb], check_deterministic=False)
        theirs = ggn @ V
    ours = op.eta(V)
    assert torch.linalg.norm(ours - theirs) <= 1e-10 * torch.linalg.norm(theirs)


def test_bad_input_is_rejected_clearly():
    model, lossfn, (x, y) = make("conv"), loss(), batch(2)
    with pytest.raises(ValueError, match="same shape"):
        MetricOperator(model, lossfn, (x, y[:1]))
    bad = x.clone()
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf values in samples \[1\]"):
        MetricOperator(model, lossfn, (bad, y))
    with pytest.raises(ValueError, match="channels"):
        MetricOperator(model, lossfn, (x[:, :3], y[:, :3]))
    with pytest.raises(ValueError, match="pair"):
        MetricOperator(model, lossfn, x)
    with pytest.raises(TypeError, match="SMSE"):
        MetricOperator(model, torch.nn.MSELoss(), (x, y))
    with pytest.raises(ValueError, match="damping"):
        MetricOperator(model, lossfn, (x, y), damping=float("nan"))
    op = MetricOperator(model, lossfn, (x, y))
    with pytest.raises(ValueError, match="rows"):
        op(torch.zeros(op.num_params + 1, 2, dtype=torch.float64))


def _sharded_worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    from symaudit.diagnostics.influence import influence
    from symaudit.groups import Dihedral4

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        model, lossfn = make("conv"), loss()
        x, y = batch(3, 8, seed=9)
        shard = (x[:1], y[:1]) if rank == 0 else (x[1:], y[1:])  # uneven: global count matters
        op = MetricOperator(model, lossfn, shard, damping=0.01, process_group=dist.group.WORLD)
        V = torch.randn(
            op.num_params, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
        )
        test = batch(2, 8, seed=10)
        res = influence(
            model,
            lossfn,
            test,
            list(Dihedral4(LAYOUT))[:2],
            shard,
            damping=0.01,
            rank=16,
            process_group=dist.group.WORLD,
        )
        torch.save(
            {"eta": op.eta(V), "raw": res.raw, "count": op.global_count}, f"{tmp}/r{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def test_sharded_metric_batch_over_two_gloo_processes_matches_one(tmp_path):
    import torch.multiprocessing as mp

    from symaudit.diagnostics.influence import influence
    from symaudit.groups import Dihedral4

    mp.spawn(_sharded_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    model, lossfn = make("conv"), loss()
    full = batch(3, 8, seed=9)
    op = MetricOperator(model, lossfn, full, damping=0.01)
    V = torch.randn(
        op.num_params, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    want = op.eta(V)
    res = influence(
        model,
        lossfn,
        batch(2, 8, seed=10),
        list(Dihedral4(LAYOUT))[:2],
        full,
        damping=0.01,
        rank=16,
    )
    for r in range(2):
        got = torch.load(tmp_path / f"r{r}.pt", weights_only=True)
        assert got["count"] == 3
        assert torch.allclose(got["eta"], want, rtol=1e-10, atol=1e-14)
        assert torch.allclose(got["raw"], res.raw, rtol=1e-8, atol=1e-12)
