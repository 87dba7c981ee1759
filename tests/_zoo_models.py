"""Foreign-style models for the zoo tests: a tiny spectral layer with complex weights (and its
explicitly real-parametrised twin), a BatchNorm conv UNet, and neuraloperator's FNO."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinySpectral(nn.Module):
    """x + irfft2(W * rfft2(x) on the lowest ``modes`` x ``modes`` frequencies) + conv1x1(x).

    ``pair=False``: W is one complex parameter `(C, C, 2 modes, modes)` (what FNOs do).
    ``pair=True``: the same W stored as a real parameter `(C, C, 2 modes, modes, 2)` holding
    (Re, Im) -- the explicitly real-parametrised twin, with the same flat coordinate order as
    ``view_as_real`` of the complex one. ``inplace``: write the spectrum into a fresh zero
    tensor in place, as neuraloperator's SpectralConv does (``vmap`` refuses this).
    Exactly equivariant to every periodic shift; not to rotations.
    """

    def __init__(
        self, channels: int = 4, modes: int = 2, *, pair: bool = False, inplace: bool = False
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        w = torch.randn(channels, channels, 2 * modes, modes, 2, generator=g) / channels
        self.pair, self.inplace, self.modes = pair, inplace, modes
        self.weight = nn.Parameter(w if pair else torch.view_as_complex(w.contiguous()))
        self.skip = nn.Conv2d(channels, channels, 1)

    def _w(self) -> torch.Tensor:
        return torch.complex(self.weight[..., 0], self.weight[..., 1]) if self.pair else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.modes
        xf = torch.fft.rfft2(x)  # (n, C, H, W // 2 + 1)
        rows = torch.cat([torch.arange(m), torch.arange(-m, 0)])
        low = xf[:, :, rows, :m]
        mixed = torch.einsum("nihw,iohw->nohw", low, self._w().to(xf.dtype))
        if self.inplace:
            out = torch.zeros(xf.shape, dtype=xf.dtype, device=xf.device)  # not batched
            out[:, :, rows, :m] = mixed
        else:  # the same spectrum assembled out of place
            n, c, h, w = xf.shape
            top, bottom = mixed[:, :, :m], mixed[:, :, m:]
            middle = xf.new_zeros(n, c, h - 2 * m, m)
            out = torch.cat([torch.cat([top, middle, bottom], 2), xf.new_zeros(n, c, h, w - m)], 3)
        return x + torch.fft.irfft2(out, s=x.shape[-2:]) + self.skip(x)


class BNUNet(nn.Module):
    """Two-level conv UNet with BatchNorm (circular padding, 2x2 average pooling, nearest
    up-sampling): shift-equivariant for even shifts only, not rotation-equivariant. Running
    statistics are set to non-trivial values so eval-mode BatchNorm matters."""

    def __init__(self, channels: int = 4, width: int = 6) -> None:
        super().__init__()

        def conv(a: int, b: int) -> nn.Conv2d:
            return nn.Conv2d(a, b, 3, padding=1, padding_mode="circular")

        self.down = conv(channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.mid = conv(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.up = conv(2 * width, channels)
        self.drop = nn.Dropout(0.5)  # must be off in eval mode
        g = torch.Generator().manual_seed(3)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.copy_(0.1 * torch.randn(width, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(width, generator=g))
            bn.num_batches_tracked.fill_(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.bn1(self.down(x)))
        m = F.gelu(self.bn2(self.mid(F.avg_pool2d(h, 2))))
        m = F.interpolate(m, scale_factor=2, mode="nearest")
        return x + self.up(self.drop(torch.cat([h, m], 1)))


def fno(positional_embedding: str | None) -> nn.Module:
    """neuraloperator 2.0.0's FNO, tiny: 4 -> 4 channels, width 8, 2 layers, 4 x 4 modes."""
    from neuralop.models import FNO

    return FNO(
        n_modes=(4, 4),
        in_channels=4,
        out_channels=4,
        hidden_channels=8,
        n_layers=2,
        positional_embedding=positional_embedding,
    )
