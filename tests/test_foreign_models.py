"""Models the diagnostics did not build: complex parameters as real pairs (the Wirtinger
convention against an explicitly real-parametrised twin), the vmap fallback, checksums of any
state_dict, and clear errors for models that are not (n, C, H, W) -> (n, C, H, W) emulators."""

import warnings

import pytest
import torch
from torch import nn

from _tiny_models import LAYOUT, batch, dense_gradients, loss
from _zoo_models import BNUNet, TinySpectral
from symaudit.diagnostics import (
    ModelOutputError,
    VmapFallbackWarning,
    cast_model,
    equivariance_error,
    influence,
    model_checksum,
)
from symaudit.diagnostics.metric import MetricOperator, dense_eta
from symaudit.groups import Dihedral4, Translations

EPS64 = torch.finfo(torch.float64).eps


def _twins(inplace: bool = False) -> tuple[nn.Module, nn.Module]:
    """The complex-weight model and its real-pair twin with identical values, float64."""
    cplx = cast_model(TinySpectral(inplace=inplace), torch.float64)
    real = cast_model(TinySpectral(pair=True, inplace=inplace), torch.float64)
    with torch.no_grad():
        real.weight.copy_(torch.view_as_real(cplx.weight))
        real.skip.load_state_dict(cplx.skip.state_dict())
    return cplx, real


def test_complex_parameters_are_real_pairs_in_eta_and_gradients():
    cplx, real = _twins()
    lossfn, xb = loss(), batch(2)
    op_c, op_r = MetricOperator(cplx, lossfn, xb), MetricOperator(real, lossfn, xb)
    # both spaces have 2 real coordinates per complex entry, in the same order
    assert op_c.num_params == op_r.num_params == 2 * cplx.weight.numel() + 4 * 4 + 4
    assert op_c.space.complex_coordinates == 2 * cplx.weight.numel()
    assert op_c.dtype == torch.float64 and torch.equal(op_c.theta, op_r.theta)
    # eta of the complex model (matrix-free, jvp/vjp) == dense eta of the real twin (jacrev)
    E = dense_eta(op_r)
    V = torch.randn(
        op_c.num_params, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    assert torch.linalg.norm(op_c.eta(V) - E @ V) <= 1e2 * EPS64 * torch.linalg.norm(E @ V)
    # the imaginary parts matter (all but those of self-conjugate modes, which irfft drops)
    im = torch.arange(1, op_c.space.complex_coordinates, 2)
    assert (E.diagonal()[im] > 1e-6 * E.diagonal().max()).float().mean() > 0.8
    # per-sample gradients (the influence right-hand sides) agree as well
    g_c = dense_gradients(op_c, lossfn, *xb)
    g_r = dense_gradients(op_r, lossfn, *xb)
    assert torch.allclose(g_c, g_r, rtol=1e-12, atol=1e-15)


def test_pytorch_complex_grad_is_the_real_pair_gradient():
    """For real L(z), z = a + ib, PyTorch's z.grad = 2 dL/d(conj z) = dL/da + i dL/db: the
    real-pair gradient of the twin, coordinate by coordinate."""
    cplx, real = _twins()
    x, y = batch(1)
    lossfn = loss()
    lossfn(cplx(x), y).backward()
    lossfn(real(x), y).backward()
    assert torch.allclose(torch.view_as_real(cplx.weight.grad), real.weight.grad, rtol=1e-12)
    assert real.weight.grad[..., 1].abs().max() > 0


def test_influence_on_complex_model_equals_real_twin():
    cplx, real = _twins()
    lossfn, xb = loss(), batch(2)
    group = Translations(LAYOUT, "x", [0, 1, 3])
    kw = dict(damping=1e-3, rtol=1e-10, max_iter=2000)
    a, b = influence(cplx, lossfn, xb, group, **kw), influence(real, lossfn, xb, group, **kw)
    assert torch.allclose(a.raw, b.raw, rtol=1e-8)
    # exactly shift-equivariant by construction: the cosine is 1 along the whole orbit
    assert torch.allclose(a.diagonal("cosine"), torch.ones(3, 2, dtype=torch.float64), atol=1e-8)


def test_vmap_fallback_warns_once_records_and_agrees():
    fast, _ = _twins(inplace=False)
    slow, _ = _twins(inplace=True)
    slow.load_state_dict(fast.state_dict())
    lossfn, xb = loss(), batch(2)
    kw = dict(damping=1e-3, rtol=1e-10, max_iter=2000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = influence(slow, lossfn, xb, Dihedral4(LAYOUT), **kw)
    fallbacks = [w for w in caught if issubclass(w.category, VmapFallbackWarning)]
    assert len(fallbacks) == 1 and "index_put_" in str(fallbacks[0].message)
    assert a.settings["batching"]["mode"] == "loop"
    b = influence(fast, lossfn, xb, Dihedral4(LAYOUT), **kw)
    assert b.settings["batching"] == {"mode": "vmap", "vmap_error": None}
    assert torch.allclose(a.raw, b.raw, rtol=1e-8)


class _WithExtra(BNUNet):
    """Non-tensor extra state in its state_dict, as neuraloperator's models keep."""

    def get_extra_state(self):
        return self.extra

    def set_extra_state(self, state) -> None:
        self.extra = state


def test_checksum_covers_every_state_dict_entry():
    model = _WithExtra()
    model.register_buffer("mask", torch.tensor(True))  # 0-dim bool buffer
    extra = {"act": torch.nn.functional.gelu, "cls": nn.Conv2d, "n": 3, "obj": object()}
    model.extra = extra
    first = model_checksum(model)
    assert first == model_checksum(model)  # deterministic (object addresses removed)
    model.bn1.num_batches_tracked += 1  # 0-dim int64 buffer
    second = model_checksum(model)
    assert second != first
    extra["n"] = 4
    assert model_checksum(model) != second
    cplx, _ = _twins()
    before = model_checksum(cplx)
    with torch.no_grad():
        cplx.weight.imag[0, 0, 0, 0] += 1e-12  # only an imaginary part changes
    assert model_checksum(cplx) != before


class _Tuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        return self.w * x, x


class _Crop(_Tuple):
    def forward(self, x):
        return self.w * x[..., 1:, 1:]


class _Single(_Tuple):
    def forward(self, x):
        return (self.w * x).float()


@pytest.mark.parametrize(
    "model, message",
    [
        (_Tuple(), "returned a tuple"),
        (_Crop(), r"4, 8, 8\) to \(\d+, 4, 7, 7\)"),
        (_Single(), "torch.float32"),
    ],
)
def test_non_emulators_get_one_clear_error(model, message):
    xb = batch(2)
    with pytest.raises(ModelOutputError, match=message):
        equivariance_error(model, xb, Dihedral4(LAYOUT), loss())
    with pytest.raises(ModelOutputError, match=message):
        influence(model, loss(), xb, Dihedral4(LAYOUT), damping=1e-3)


def test_mixed_precision_parameters_are_refused():
    model = TinySpectral()  # complex64 weight
    model.skip.double()  # float64 conv next to it
    with pytest.raises(ValueError, match="mixes parameter precisions"):
        MetricOperator(model, loss(), batch(1))


def test_cast_model_keeps_imaginary_parts():
    model = TinySpectral()
    w = model.weight.detach().clone()
    cast_model(model, torch.float64)
    assert model.weight.dtype == torch.complex128
    assert torch.equal(model.weight.detach(), w.to(torch.complex128))
