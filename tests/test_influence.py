"""Influence matrices against dense oracles; the equivariant control; solver honesty; files."""

import os
import warnings

import pytest
import torch

from _tiny_models import (
    GRID,
    LAYOUT,
    batch,
    dense_gradients,
    dense_influence,
    loss,
    make,
)
from symaudit.diagnostics.influence import (
    DEFAULT_RELATIVE_DAMPING,
    InfluenceFileError,
    InfluenceResult,
    influence,
    influence_sweep,
)
from symaudit.diagnostics.krylov import ConvergenceWarning, PrecisionWarning
from symaudit.diagnostics.metric import MetricOperator
from symaudit.groups import Dihedral4, GalileanBoost, Translations

RTOL = 5e-3
D4 = Dihedral4(LAYOUT)


def _rel(a, b):
    return float((a - b).flatten(1).norm(dim=1).max() / b.flatten(1).norm(dim=1).min())


@pytest.mark.parametrize("kind", ["unet", "vit", "gcnn"])
def test_matches_dense_oracle(kind):
    model, lossfn = make(kind), loss()
    test = batch(2, GRID[kind])
    res = influence(model, lossfn, test, D4, rtol=RTOL, rank=32)
    raw, cos, chi = dense_influence(model, lossfn, test, D4, res.damping)
    assert res.elements == [g.name for g in D4]
    assert res.all_converged
    assert _rel(res.raw, raw) <= 10 * RTOL
    assert _rel(res.frobenius, raw / raw.flatten(1).norm(dim=1).view(-1, 1, 1)) <= 10 * RTOL
    assert (res.cosine - cos).abs().max() <= 10 * RTOL
    assert (res.cosine.abs() <= 1 + 10 * RTOL).all()
    # the recorded residuals are the true ones, checked against the dense chi
    assert max(res.reports["test"]["residuals"]) <= RTOL
    # "auto" damping is the documented fraction of the top eigenvalue of eta
    top = float(torch.linalg.eigvalsh(chi)[-1]) - res.damping
    assert res.damping == pytest.approx(DEFAULT_RELATIVE_DAMPING * top, rel=1e-2)
    # the Krylov bilinear form is symmetric where it should be: M^e is symmetric
    e = res.index("e")
    assert torch.allclose(res.raw[e], res.raw[e].T, rtol=10 * RTOL, atol=1e-12)
    assert (res.diagonal("cosine")[e] - 1).abs().max() <= 10 * RTOL


def test_galilean_boost_transforms_input_and_target_differently():
    # A boost observed over dt kicks the input but kicks *and* shifts the target by c*dt
    # (one cell here): the influence must use that transition, not g applied to both.
    model, lossfn = make("gcnn"), loss()
    test = batch(2, GRID["gcnn"], seed=3)
    boost = GalileanBoost(LAYOUT, velocity=(1.0, 0.0), dt=1.0 / GRID["gcnn"])
    res = influence(model, lossfn, test, boost, rtol=RTOL, rank=16)
    raw, _, _ = dense_influence(model, lossfn, test, boost, res.damping)
    assert _rel(res.raw, raw) <= 10 * RTOL
    g = list(boost)[-1]
    naive = dense_gradients(MetricOperator(model, lossfn, test), lossfn, g(test[0]), g(test[1]))
    exact = dense_gradients(MetricOperator(model, lossfn, test), lossfn, *g.transition(*test))
    assert (naive - exact).norm() > 1e-3 * exact.norm()


def test_equivariant_model_is_constant_along_the_orbit():
    model, lossfn = make("gcnn"), loss()
    test = batch(3, GRID["gcnn"], seed=5)
    shifts = Translations(LAYOUT, axis="xy", shifts=range(0, 8, 3))
    for group in (D4, shifts):
        res = influence(model, lossfn, test, group, rtol=RTOL, rank=32)
        diag = res.diagonal("raw")
        assert ((diag - diag[0]).abs() <= 10 * RTOL * diag[0].abs()).all()
        assert (res.diagonal("cosine") - 1).abs().max() <= 10 * RTOL
        assert _rel(res.raw, res.raw[:1].expand_as(res.raw)) <= 10 * RTOL


def test_circular_cnn_is_constant_over_all_shifts_but_the_vit_is_not():
    lossfn = loss()
    shifts = Translations(LAYOUT, axis="x", shifts=range(8))
    res = influence(make("conv"), lossfn, batch(2, 8), shifts, rtol=RTOL, rank=32)
    diag = res.diagonal("cosine")
    assert (diag - 1).abs().max() <= 10 * RTOL
    # teeth: absolute position embeddings break the shift symmetry, visibly
    vshift = Translations(LAYOUT, axis="x", shifts=[0, 1, 5])
    vit = influence(make("vit"), lossfn, batch(2, 16), vshift, rtol=RTOL, rank=32)
    assert (vit.diagonal("cosine")[1:] - 1).abs().max() > 100 * RTOL


def test_metric_batch_and_parameter_subset():
    model, lossfn = make("conv"), loss()
    test, metric = batch(2, 8, seed=2), batch(3, 8, seed=3)
    group = list(D4)[:3]
    res = influence(model, lossfn, test, group, metric, damping=1e-3, rtol=1e-4, rank=32)
    raw, _, _ = dense_influence(model, lossfn, test, group, 1e-3, metric=metric)
    assert _rel(res.raw, raw) <= 10 * 1e-4
    assert res.settings["metric_batch"]["source"] == "given"
    assert res.settings["metric_batch"]["size"] == 3
    sub = influence(model, lossfn, test, group, metric, damping=1e-3, params=["out"], rank=32)
    assert sub.settings["num_params"] == sum(p.numel() for p in model.out.parameters())
    assert _rel(sub.raw, raw) > 0.1  # a different metric space gives a different answer


def test_damping_sweep_equals_separate_runs_and_float32_agrees():
    model, lossfn, test = make("conv"), loss(), batch(2, 8)
    group = list(D4)[:2]
    sweep = influence_sweep(model, lossfn, test, group, dampings=[1e-2, "auto:1e-2"], rank=32)
    one = influence(model, lossfn, test, group, damping=1e-2, rank=32)
    assert torch.allclose(sweep[0].raw, one.raw, rtol=1e-8)
    assert sweep[1].damping == pytest.approx(1e-2 * sweep[1].spectrum["top_eigenvalue"])
    m32 = make("conv", dtype=torch.float32)
    r32 = influence(m32, lossfn, (test[0].float(), test[1].float()), group, damping=1e-2)
    assert r32.settings["dtype"] == "torch.float32"
    assert _rel(r32.raw, one.raw) <= 10 * RTOL


def test_non_convergence_is_loud_and_recorded():
    model, lossfn, test = make("conv"), loss(), batch(2, 8)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = influence(
            model, lossfn, test, list(D4)[:2], damping=1e-6, max_iter=2, preconditioner=None
        )
    assert not res.all_converged
    assert res.reports["test"]["converged"] == [False, False]
    assert min(res.reports["test"]["residuals"]) > RTOL
    assert res.reports["test"]["iterations"] == [2, 2]


def test_residuals_carry_their_attainable_accuracy(tmp_path):
    """Every solve records, next to each residual, eps (||chi|| ||u|| / ||b|| + 1) in the
    working precision, with ||chi|| = lambda + lambda_max(eta); a float32 audit whose rtol is
    below eps32 (kappa + 1) is warned about before the solve."""
    m32, lossfn = make("conv", dtype=torch.float32), loss()
    xt, xt1 = batch(2, 8)
    test = (xt.float(), xt1.float())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = influence(m32, lossfn, test, list(D4)[:2], damping="auto:1e-6", max_iter=3)
    kinds = {type(w.message) for w in caught}
    assert {PrecisionWarning, ConvergenceWarning} <= kinds  # before the solve, and after it
    eps = torch.finfo(torch.float32).eps
    top = res.spectrum["top_eigenvalue"]
    for rep in res.reports.values():
        assert len(rep["attainable"]) == len(rep["residuals"]) == 2
        assert rep["eps"] == eps
        assert rep["operator_norm"] == pytest.approx(res.damping + top, rel=1e-12)
        kappa = rep["operator_norm"] / res.damping
        assert all(eps <= a <= eps * (kappa + 1) * (1 + 1e-6) for a in rep["attainable"])
    saved = InfluenceResult.load(res.save(tmp_path / "r.pt"))
    assert saved.reports["test"]["attainable"] == res.reports["test"]["attainable"]


def test_save_load_roundtrip_and_corrupt_files(tmp_path):
    model, lossfn, test = make("conv"), loss(), batch(2, 8)
    res = influence(model, lossfn, test, list(D4)[:3], damping=1e-2, rank=16)
    path = res.save(tmp_path / "sub" / "infl.pt")
    assert sorted(os.listdir(path.parent)) == ["infl.pt"]  # no temporary left behind
    back = InfluenceResult.load(path)
    assert back.elements == res.elements and back.damping == res.damping
    assert torch.equal(back.raw, res.raw) and torch.equal(back.cosine, res.cosine)
    assert back.settings == res.settings and back.reports == res.reports
    assert back.settings["model_checksum"] == res.settings["model_checksum"]
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    again = influence(model, lossfn, test, list(D4)[:1], damping=1e-2, rank=16)
    assert again.settings["model_checksum"] != res.settings["model_checksum"]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InfluenceFileError, match="not a readable influence result"):
        InfluenceResult.load(bad)
    with pytest.raises(InfluenceFileError, match="no influence result"):
        InfluenceResult.load(tmp_path / "missing.pt")
    with pytest.raises(KeyError, match="no group element"):
        res.index("q")


def test_bad_input_is_rejected_clearly():
    model, lossfn, (x, y) = make("conv"), loss(), batch(2, 8)
    with pytest.raises(ValueError, match="same shape"):
        influence(model, lossfn, (x, y[:1]), D4)
    nan = x.clone()
    nan[0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        influence(model, lossfn, (nan, y), D4)
    with pytest.raises(ValueError, match="square grid"):
        influence(model, lossfn, (x[..., :6], y[..., :6]), D4)
    with pytest.raises(TypeError, match=r"\.name"):
        influence(model, lossfn, (x, y), [lambda z: z])
    with pytest.raises(ValueError, match="no elements"):
        influence(model, lossfn, (x, y), [])
    with pytest.raises(ValueError, match="damping"):
        influence(model, lossfn, (x, y), D4, damping=-1.0)
    with pytest.raises(ValueError, match="damping"):
        influence(model, lossfn, (x, y), D4, damping="big")
    with pytest.raises(ValueError, match="preconditioner"):
        influence(model, lossfn, (x, y), D4, preconditioner="kfac")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a converged run warns about nothing
        influence(model, lossfn, (x, y), list(D4)[:1], damping=1e-2)


def _fake_op(lam: torch.Tensor):
    """An operator (shape, dtype, device, matmat) around a dense eta = Q diag Q^T."""
    from symaudit.diagnostics._operator import DenseOperator

    n = lam.numel()
    Q = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ).Q
    eta = (Q * lam) @ Q.T
    return DenseOperator(eta)


def test_auto_rank_grows_only_while_it_pays():
    """'auto' starts at 32 test vectors and doubles while rank < columns * 1.4 * sqrt(rho):
    a slowly decaying spectrum with many right-hand sides grows the sketch, a metric of rank
    below 32 (rho = 0) or a single right-hand side does not; a fixed rank is kept."""
    from symaudit.diagnostics.influence import _grow_sketch

    slow = _fake_op(1.0 / torch.arange(1, 601, dtype=torch.float64))
    big = _grow_sketch(slow, "auto", 256, ["auto"], 0)
    assert big.products > 32 and big.products & (big.products - 1) == 0  # a doubling of 32
    lam = 1e-3 * big.top_eigenvalue
    rho = big.smallest_eigenvalue / lam
    assert big.products >= 256 * 1.4 * rho**0.5 or big.products * 2 > 600  # stopped by rule/cap
    assert _grow_sketch(slow, "auto", 1, ["auto"], 0).products == 32
    lowrank = torch.zeros(600, dtype=torch.float64)
    lowrank[:20] = 1.0
    assert _grow_sketch(_fake_op(lowrank), "auto", 256, [1e-6], 0).products == 32
    assert _grow_sketch(slow, 48, 256, ["auto"], 0).products == 48
    with pytest.raises(ValueError, match="rank"):
        _grow_sketch(slow, 0, 4, ["auto"], 0)


def test_block_and_independent_cg_agree():
    model, lossfn = make("unet"), loss()
    test = batch(2, GRID["unet"])
    kw = dict(damping=0.1, rtol=1e-3, rank=16)
    blk = influence(model, lossfn, test, list(D4)[:2], solver="block", **kw)
    ind = influence(model, lossfn, test, list(D4)[:2], solver="cg", **kw)
    assert blk.settings["solver"] == "block" and ind.settings["solver"] == "cg"
    assert blk.all_converged and ind.all_converged
    assert _rel(blk.raw, ind.raw) < 1e-2 and _rel(blk.cosine, ind.cosine) < 1e-2
    with pytest.raises(ValueError, match="solver"):
        influence(model, lossfn, test, D4, solver="minres")


def test_audit_cli_rank_is_a_positive_integer_or_auto(tmp_path):
    from typer.testing import CliRunner

    from symaudit.cli import app

    for bad in ("0", "-3", "big"):
        args = ["audit", "--run", str(tmp_path), "--out", str(tmp_path / "a"), "--group", "d4"]
        res = CliRunner().invoke(app, [*args, "--rank", bad], env={"COLUMNS": "300"})
        assert res.exit_code == 2 and "positive integer or 'auto'" in res.output
        assert not (tmp_path / "a").exists()
