"""Residual UNet emulator (PDEArena-style "modern" UNet) with periodic padding.

    x_{t+1} ≈ x_t + UNet(x_t)        (residual form; `residual=False` predicts x_{t+1} directly)

Levels ℓ = 0..L-1 have widths  c_ℓ = width · Π_{i≤ℓ} mults[i]  (cumulative, as in PDEArena);
each level holds `blocks` residual blocks (GroupNorm → GELU → 3×3 conv, twice, plus a skip),
and adjacent levels are joined by stride-2 4×4 convolutions (down; footprint centred on each
2×2 block) and nearest-neighbour ×2 up-sampling followed by a 3×3 convolution (up). Every
convolution pads circularly (periodic domain). Because each resampling step is aligned with
the 2×2 blocks of the grid, the network is exactly equivariant to shifts by multiples of its
total stride 2^(L-1) (a stride-2 3×3 conv with padding 1 would centre its windows on even
cells, breaking D4 alignment on even grids); GroupNorm statistics are shift-invariant.
Other shifts are only approximately equivariant — that is part of what the audit measures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from symaudit.models._checks import check_state

__all__ = ["UNet"]


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    g = groups
    while channels % g:  # largest divisor of `channels` not above the requested group count
        g -= 1
    return nn.GroupNorm(g, channels)


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular")


def _downsample(c: int) -> nn.Conv2d:
    # 4×4 window, stride 2, one cell of circular padding: output cell i sees input cells
    # 2i-1 .. 2i+2, a footprint centred on the 2×2 block {2i, 2i+1}. Blocks map onto blocks
    # under D4 on even grids, so the resampling is as symmetric as the grid allows.
    return nn.Conv2d(c, c, 4, stride=2, padding=1, padding_mode="circular")


def _upsample(c: int) -> nn.Sequential:
    # Nearest-neighbour ×2 copies each cell into its 2×2 block, then a periodic 3×3 conv:
    # aligned like `_downsample`, periodic, and without transposed-conv checkerboards.
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv3(c, c))


class ResidualBlock(nn.Module):
    """h = conv(GELU(GN(conv(GELU(GN(x)))))) + skip(x); skip is a 1×1 conv if widths differ."""

    def __init__(self, cin: int, cout: int, norm_groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin, norm_groups)
        self.conv1 = _conv3(cin, cout)
        self.norm2 = _norm(cout, norm_groups)
        self.conv2 = _conv3(cout, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.gelu(self.norm1(x)))
        h = self.conv2(F.gelu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """Residual UNet mapping `(B, in_channels, H, W) → (B, out_channels, H, W)`.

    Args:
        in_channels, out_channels: field channels (4 for Euler: rho, m_x, m_y, E).
        width: channels of the first level.
        mults: per-level channel multipliers, applied cumulatively; len(mults) - 1 down-samplings.
        blocks: residual blocks per level on the way down; the way up has ``blocks + 1`` per
            level, each fed one skip connection (PDEArena layout).
        norm_groups: GroupNorm groups (reduced to a divisor of the width where needed).
        residual: predict x + f(x) (needs in_channels == out_channels).

    H and W must be divisible by 2^(len(mults) - 1).
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        width: int = 24,
        mults: Sequence[int] = (1, 2, 2, 2, 1),
        blocks: int = 2,
        norm_groups: int = 8,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if residual and in_channels != out_channels:
            raise ValueError("residual=True needs in_channels == out_channels")
        if len(mults) < 1 or blocks < 1 or width < 1:
            raise ValueError("UNet needs at least one level, one block and positive width")
        self.in_channels, self.out_channels, self.residual = in_channels, out_channels, residual
        widths = []
        c = width
        for m in mults:
            c *= int(m)
            widths.append(c)
        self.stride = 2 ** (len(widths) - 1)

        self.stem = _conv3(in_channels, width)
        # Down path: every block output and every down-sampled map is kept as a skip, and the
        # up path consumes them in reverse, one per block (PDEArena's layout).
        self.down = nn.ModuleList()
        skip_widths = [width]
        prev = width
        for i, c in enumerate(widths):
            for _ in range(blocks):
                self.down.append(ResidualBlock(prev, c, norm_groups))
                prev = c
                skip_widths.append(c)
            if i < len(widths) - 1:
                self.down.append(_downsample(c))
                skip_widths.append(c)
        self.middle = nn.Sequential(
            ResidualBlock(prev, prev, norm_groups), ResidualBlock(prev, prev, norm_groups)
        )
        self.up = nn.ModuleList()
        for i in reversed(range(len(widths))):
            lower = widths[i - 1] if i > 0 else width
            for _ in range(blocks):
                self.up.append(ResidualBlock(prev + skip_widths.pop(), widths[i], norm_groups))
                prev = widths[i]
            self.up.append(ResidualBlock(prev + skip_widths.pop(), lower, norm_groups))
            prev = lower
            if i > 0:
                self.up.append(_upsample(prev))
        self.head_norm = _norm(prev, norm_groups)
        self.head = _conv3(prev, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, C_in, H, W) → (B, C_out, H, W)`."""
        check_state(x, self.in_channels, multiple=self.stride, what="UNet")
        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = layer(h)
            skips.append(h)
        h = self.middle(h)
        for layer in self.up:
            if isinstance(layer, ResidualBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1))
            else:
                h = layer(h)
        out = self.head(F.gelu(self.head_norm(h)))
        return x + out if self.residual else out
