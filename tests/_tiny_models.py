"""Tiny models (P <= 5000) and group stand-ins for the influence tests, where dense oracles
(eta formed with jacrev) are affordable."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from symaudit import SMSE, FieldLayout
from symaudit.diagnostics.metric import MetricOperator

LAYOUT = FieldLayout.euler()


class TinyConv(nn.Module):
    """UNet-shaped ingredients: circular 3x3 convs, GroupNorm, GELU, a residual connection."""

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


class TinyViT(nn.Module):
    """ViT-shaped: 2x2 patches, learned absolute position embedding, one pre-LN block with
    scaled-dot-product attention (the fused kernel forward AD cannot differentiate)."""

    def __init__(self, grid: int = 8, dim: int = 16, patch: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.patch, self.heads, self.grid = patch, heads, grid
        n = (grid // patch) ** 2
        self.embed = nn.Linear(4 * patch * patch, dim)
        self.pos = nn.Parameter(0.1 * torch.randn(n, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 4 * patch * patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        t = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        t = self.embed(t.reshape(b, (h // p) * (w // p), c * p * p)) + self.pos
        q, k, v = self.qkv(self.ln1(t)).chunk(3, dim=-1)
        split = lambda z: z.reshape(b, -1, self.heads, z.shape[-1] // self.heads).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(q), split(k), split(v))
        t = t + self.proj(a.transpose(1, 2).reshape(b, -1, q.shape[-1]))
        t = t + self.mlp(self.ln2(t))
        o = self.head(t).reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x + o.reshape(b, c, h, w)


class D4Element:
    """Stand-in for a D4 element r^rot s^flip on Euler fields (s first): the grid moves and
    the momentum components transform with it."""

    def __init__(self, rot: int, flip: bool) -> None:
        self.rot, self.flip = rot % 4, flip
        self.name = ("e" if rot == 0 and not flip else "") + (
            ("r" if rot == 1 else f"r{rot}" if rot else "") + ("s" if flip else "")
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        if self.flip:  # (x, y) -> (-x, y)
            x = x.flip(-1)
            x[..., 1, :, :] = -x[..., 1, :, :]
        for _ in range(self.rot):  # (x, y) -> (-y, x), grid rotated the same way
            if x.shape[-1] != x.shape[-2]:
                raise ValueError("rotation needs a square grid")
            x = torch.rot90(x, 1, dims=(-1, -2))
            mx, my = x[..., 1, :, :].clone(), x[..., 2, :, :].clone()
            x[..., 1, :, :], x[..., 2, :, :] = -my, mx
        return x

    def inverse_apply(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range((4 - self.rot) % 4):
            x = D4Element(1, False)(x)
        return D4Element(0, True)(x) if self.flip else x


def d4() -> list[D4Element]:
    return [D4Element(k, m) for m in (False, True) for k in range(4)]


class Shift:
    """Stand-in for a periodic translation by (dy, dx) cells."""

    def __init__(self, dy: int, dx: int) -> None:
        self.dy, self.dx = dy, dx
        self.name = f"t({dx},{dy})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, (self.dy, self.dx), dims=(-2, -1))


class D4Symmetrised(nn.Module):
    """Exactly D4-equivariant: f(x) = mean_h h^{-1} base(h x)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.elems = d4()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([h.inverse_apply(self.base(h(x))) for h in self.elems]).mean(0)


def make(kind: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = {
        "conv": lambda: TinyConv(),
        "vit": lambda: TinyViT(),
        "gcnn": lambda: D4Symmetrised(TinyConv(width=6, padding_mode="zeros")),
    }[kind]()
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
        J = jacrev(lambda th: op.forward(th, x))(op.theta)
    return J.reshape(-1, op.num_params)


def dense_gradients(op: MetricOperator, lossfn: SMSE, x: torch.Tensor, y: torch.Tensor):
    """Per-sample gradients by plain autograd, one sample at a time (the oracle), `(P, N)`."""
    cols = []
    for i in range(x.shape[0]):
        th = op.theta.clone().requires_grad_(True)
        c = lossfn(op.forward(th, x[i : i + 1]), y[i : i + 1])
        (g,) = torch.autograd.grad(c, th)
        cols.append(g)
    return torch.stack(cols, 1)
