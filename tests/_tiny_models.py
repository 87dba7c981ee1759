"""Tiny models (P <= 5000) for the influence tests, where dense oracles (eta formed with
jacrev, per-sample gradients by plain autograd) are affordable."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from symaudit import SMSE, FieldLayout, models
from symaudit.diagnostics.metric import MetricOperator

LAYOUT = FieldLayout.euler()


class TinyConv(nn.Module):
    """Plain CNN without striding: circular 3x3 convs, GroupNorm, GELU, a residual connection
    (equivariant to every periodic shift, not to rotations)."""

    def __init__(self, width: int = 8, padding_mode: str = "circular") -> None:
        super().__init__()
        self.inp = nn.Conv2d(4, width, 3, padding=1, padding_mode=padding_mode)
        self.norm = nn.GroupNorm(2, width)
        self.mid = nn.Conv2d(width, width, 3, padding=1, padding_mode=padding_mode)
        self.out = nn.Conv2d(width, 4, 3, padding=1, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm(self.inp(x)))
        h = F.gelu(self.mid(h))
        return x + self.out(h)


#: grid size per model kind (the UNet pools four times; the ViT preset is built for 16^2)
GRID = {"unet": 16, "vit": 16, "gcnn": 8, "conv": 8}


def make(kind: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """The models helper's `*-tiny` presets, or the plain circular CNN ``"conv"``."""
    torch.manual_seed(seed)
    model = TinyConv() if kind == "conv" else models.build(f"{kind}-tiny")
    return model.to(dtype)


def batch(n: int, grid: int = 8, dtype: torch.dtype = torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, grid, grid, generator=g, dtype=torch.float64)
    x[:, 0] = x[:, 0].abs() + 0.5
    y = x + 0.1 * torch.randn(n, 4, grid, grid, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def loss() -> SMSE:
    return SMSE(torch.tensor([1.0, 0.7, 0.7, 2.0]))


def dense_jacobian(op: MetricOperator, x: torch.Tensor) -> torch.Tensor:
    """J of the model outputs on x w.r.t. op's flat parameters, `(n C H W, P)`."""
    from torch.func import jacrev

    from symaudit.diagnostics.metric import _eval_math_attention

    with _eval_math_attention(op.model):
        J = jacrev(lambda th: op.forward(th, x), chunk_size=64)(op.theta)
    return J.reshape(-1, op.num_params)


def dense_gradients(op: MetricOperator, lossfn: SMSE, x: torch.Tensor, y: torch.Tensor):
    """Per-sample gradients by plain autograd, one sample at a time (the oracle), `(P, N)`;
    in eval mode like the diagnostics (BatchNorm running statistics, no dropout)."""
    from symaudit.diagnostics.metric import _eval_math_attention

    cols = []
    with _eval_math_attention(op.model):
        for i in range(x.shape[0]):
            th = op.theta.clone().requires_grad_(True)
            c = lossfn(op.forward(th, x[i : i + 1]), y[i : i + 1])
            (g,) = torch.autograd.grad(c, th)
            cols.append(g)
    return torch.stack(cols, 1)


def dense_influence(model, lossfn: SMSE, test, group, lam: float, metric=None):
    """Dense M^g `(|G|, N, N)`, cosine `(|G|, N, N)` and chi `(P, P)`: chi formed explicitly
    (`dense_eta`), per-sample gradients taken one sample at a time with plain autograd."""
    from symaudit.diagnostics.metric import dense_eta

    op = MetricOperator(model, lossfn, test if metric is None else metric)
    chi = dense_eta(op) + lam * torch.eye(op.num_params, dtype=op.dtype)
    factor = torch.linalg.cholesky(chi)  # chi is SPD: factor once, solve for every element
    B0 = dense_gradients(op, lossfn, *test)
    n0 = (B0 * torch.cholesky_solve(B0, factor)).sum(0).sqrt()
    raw, cos = [], []
    for g in group:
        Bg = dense_gradients(op, lossfn, *g.transition(*test))
        X = torch.cholesky_solve(Bg, factor)
        M = B0.T @ X
        raw.append(M)
        cos.append(M / n0[:, None] / (Bg * X).sum(0).sqrt()[None, :])
    return torch.stack(raw), torch.stack(cos), chi
