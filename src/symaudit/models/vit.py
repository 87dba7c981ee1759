"""Vision-transformer emulator with a learned absolute position embedding.

    tokens = PatchEmbed(x) + P            P ∈ R^{N×D} learned, N = (H/p)(W/p) patches
    tokens ← tokens + Attn(LN(tokens));   tokens ← tokens + MLP(LN(tokens))     (× depth)
    x_{t+1} ≈ x_t + Unpatch(LN(tokens))    (linear map of each token back to its p×p patch)

The absolute position embedding makes the model depend on where a pattern sits, so it breaks
translation and D4 symmetry by construction — intentionally, as in the paper, whose findings
rest on it. Attention is written out (softmax(QKᵀ/√d)V) instead of calling the fused
scaled-dot-product kernels, which fail under forward-mode AD (`torch.func.jvp`, used by the
influence engine); the arithmetic is that of PyTorch's "math" SDPA backend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from symaudit.models._checks import check_state

__all__ = ["ViT"]


class Attention(nn.Module):
    """Multi-head self-attention on `(B, N, D)` tokens."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """ViT mapping `(B, in_channels, H, W) → (B, out_channels, H, W)` at one fixed resolution.

    Args:
        resolution: grid size H = W the position embedding is built for (int or (H, W)).
        patch: patch side p (H and W divisible by p); N = HW/p² tokens.
        width, depth, heads, mlp_ratio: transformer width D, number of blocks, attention
            heads, hidden MLP width as a multiple of D.
        residual: predict x + f(x).
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        resolution: int | tuple[int, int] = 128,
        patch: int = 8,
        width: int = 256,
        depth: int = 6,
        heads: int = 8,
        mlp_ratio: int = 4,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if residual and in_channels != out_channels:
            raise ValueError("residual=True needs in_channels == out_channels")
        h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        if h % patch or w % patch:
            raise ValueError(f"resolution {h}x{w} is not divisible by the patch size {patch}")
        self.in_channels, self.out_channels, self.residual = in_channels, out_channels, residual
        self.resolution, self.patch = (h, w), patch
        self.embed = nn.Conv2d(in_channels, width, patch, stride=patch)  # linear patch embedding
        self.position = nn.Parameter(torch.zeros(1, (h // patch) * (w // patch), width))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.unpatch = nn.Linear(width, out_channels * patch * patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, C_in, H, W) → (B, C_out, H, W)`; H, W must equal the built resolution."""
        check_state(x, self.in_channels, what="ViT")
        if tuple(x.shape[-2:]) != self.resolution:
            raise ValueError(
                f"ViT was built for {self.resolution[0]}x{self.resolution[1]} inputs (its "
                f"position embedding is resolution-specific), got {x.shape[-2]}x{x.shape[-1]}"
            )
        b = x.shape[0]
        p = self.patch
        gh, gw = self.resolution[0] // p, self.resolution[1] // p
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.position
        for block in self.blocks:
            tokens = block(tokens)
        out = self.unpatch(self.norm(tokens))  # (B, N, C·p·p)
        out = out.view(b, gh, gw, self.out_channels, p, p).permute(0, 3, 1, 4, 2, 5)
        out = out.reshape(b, self.out_channels, gh * p, gw * p)
        return x + out if self.residual else out
