"""The model zoo: real models from installable packages (neuraloperator's FNO with and without
its positional embedding), a BatchNorm conv UNet, and our own presets, each audited under D4
and translations. Every influence matrix is checked against a dense oracle; every element a
model is equivariant to by construction must show a defect at round-off and a cosine influence
of 1 along the orbit, every other element both clearly not.

Tolerances, from working precision and conditioning:
- eps: the model's working precision. float64 for everything except neuraloperator's FNO,
  whose SpectralConv accumulates its spectrum in a complex64 tensor whatever the weights'
  dtype (``out_fft = torch.zeros(..., dtype=torch.cfloat)``): eps = float32's there.
- Round-off defect: D_g <= (100 eps)^2 S, S = mean of f(x)^2 / rms^2 (the output's own SMSE
  scale): a relative output error of 100 eps, squared by the SMSE. "Clearly not equivariant":
  D_g >= 1e-6 S (the smallest measured among the non-equivariant cases is 3.9e-5 S, FNO with
  grid embedding at a one-cell shift; the round-off bound is 1.4e-10 S at eps = float32's).
- Influence vs oracle: lambda = 1e-1 x top eigenvalue of eta, so kappa(chi) <= 11; the solver
  stops at relative residual rtol = 1e-10, so each solution has relative error <= kappa rtol,
  and the two ways of differentiating (jvp/vjp vs. dense jacrev or plain autograd) may disagree
  by ~eps per product, amplified by kappa: tol = 10 kappa (rtol + eps), first order in both.
- Cosine of x with g x along an exact orbit: grad C_{gx} = grad C_x exactly when f commutes
  with g for every theta; rounding perturbs the two gradients by ~eps, which moves a cosine
  only at second order, so |cos - 1| <= tol_cos = 10 kappa rtol + (10 kappa eps)^2. An element
  that is not a symmetry of the model must show |cos - 1| >= 100 tol_cos.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from _tiny_models import LAYOUT, batch, dense_influence, loss, make
from _zoo_models import BNUNet, fno
from symaudit.diagnostics import cast_model, equivariance_error, influence
from symaudit.groups import Dihedral4, Translations

# neuraloperator's FNO runs column by column (in-place write): expected, tested elsewhere
pytestmark = pytest.mark.filterwarnings("ignore::symaudit.diagnostics.VmapFallbackWarning")

EPS32, EPS64 = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps
RELATIVE_DAMPING = 1e-1
KAPPA = 1 + 1 / RELATIVE_DAMPING
SHIFTS = [0, 1, 2, 3]


@dataclass(frozen=True)
class Zoo:
    build: Callable[[], nn.Module]
    grid: int
    eps: float
    d4_exact: bool
    shift_exact: Callable[[int], bool]  # is the model exactly equivariant to this shift?


ZOO = {
    "fno": Zoo(lambda: fno(None), 8, EPS32, False, lambda s: True),
    "fno-grid": Zoo(lambda: fno("grid"), 8, EPS32, False, lambda s: s == 0),
    # one 2x2 pooling: exactly equivariant to even shifts
    "bn-unet": Zoo(BNUNet, 8, EPS64, False, lambda s: s % 2 == 0),
    # four poolings on 16^2: only the trivial shift
    "unet-tiny": Zoo(lambda: make("unet"), 16, EPS64, False, lambda s: s % 16 == 0),
    "vit-tiny": Zoo(lambda: make("vit"), 16, EPS64, False, lambda s: s == 0),
    "gcnn-tiny": Zoo(lambda: make("gcnn"), 8, EPS64, True, lambda s: True),
}


def _groups():
    return {"d4": Dihedral4(LAYOUT), "shift-x": Translations(LAYOUT, "x", SHIFTS)}


def _exact(z: Zoo, kind: str, name: str) -> bool:
    if name == "e":
        return True
    if kind == "d4":
        return z.d4_exact
    return z.shift_exact(SHIFTS[int(name.removeprefix("tx"))] if name != "e" else 0)


def _model(name: str) -> tuple[Zoo, nn.Module]:
    z = ZOO[name]
    if name.startswith("fno"):
        pytest.importorskip("neuralop")
    torch.manual_seed(0)
    return z, cast_model(z.build(), torch.float64)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_defects_at_round_off_exactly_where_equivariant(name):
    z, model = _model(name)
    xb, lossfn = batch(2, z.grid), loss()
    with torch.no_grad():
        scale = float(lossfn(model.eval()(xb[0]), torch.zeros_like(xb[0])))
    for kind, group in _groups().items():
        res = equivariance_error(model, xb, group, lossfn)
        for i, el in enumerate(res.elements):
            worst = float(res.defect[i].max()) / scale
            if _exact(z, kind, el):
                assert worst <= (100 * z.eps) ** 2, f"{name} {el}: defect {worst:.2e} x S"
            else:
                assert worst >= 1e-6, f"{name} {el}: defect only {worst:.2e} x S"


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_influence_matches_dense_oracle(name):
    z, model = _model(name)
    xb, lossfn = batch(2, z.grid), loss()
    rtol = 1e-10
    tol = 10 * KAPPA * (rtol + z.eps)
    tol_cos = 10 * KAPPA * rtol + (10 * KAPPA * z.eps) ** 2
    # D4 and the shifts audited in one run (one oracle chi): any named elements will do
    groups = _groups()
    elements = list(groups["d4"]) + list(groups["shift-x"])[1:]
    kinds = ["d4"] * 8 + ["shift-x"] * (len(SHIFTS) - 1)
    res = influence(
        model, lossfn, xb, elements, damping=f"auto:{RELATIVE_DAMPING}", rtol=rtol, max_iter=3000
    )
    assert res.all_converged, f"{name}: solver did not converge"
    raw, cos, _ = dense_influence(model, lossfn, xb, elements, res.damping)
    err = float((res.raw - raw).norm() / raw.norm())
    assert err <= tol, f"{name}: influence off the oracle by {err:.2e} > {tol:.2e}"
    diag = res.diagonal("cosine")  # (|G|, N): cosine of x_i with its own image g x_i
    assert torch.allclose(diag, cos.diagonal(dim1=1, dim2=2), atol=tol)
    for i, (kind, el) in enumerate(zip(kinds, res.elements, strict=True)):
        gap = float((diag[i] - 1).abs().max())
        if _exact(z, kind, el):
            assert gap <= tol_cos, f"{name} {el}: cosine {diag[i].tolist()} not 1"
        else:
            assert gap >= 100 * tol_cos, f"{name} {el}: cosine {diag[i].tolist()} near 1"
