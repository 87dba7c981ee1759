"""Channel statistics for normalisation: RMS per channel, one shared RMS per vector.

Sharing one scale between the components of a vector (and never shifting a vector's mean)
keeps the SMSE loss invariant under rotations and reflections; see DESIGN.md.
"""

from __future__ import annotations

import torch

from symaudit.fields import FieldLayout

__all__ = ["RunningRMS", "channel_rms"]


class RunningRMS:
    """Streaming sum of squares per channel over tensors shaped `(..., C, H, W)` (float64)."""

    def __init__(self, layout: FieldLayout) -> None:
        self.layout = layout
        self._sumsq = torch.zeros(layout.num_channels, dtype=torch.float64)
        self._count = 0

    def update(self, x: torch.Tensor) -> None:
        self.layout.check(x, what="statistics input")
        x = x.detach().to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(x).all():
            raise ValueError("statistics input contains NaN or infinite values")
        self._sumsq += x.square().transpose(0, -3).reshape(x.shape[-3], -1).sum(dim=1)
        self._count += x.numel() // x.shape[-3]

    def compute(self) -> torch.Tensor:
        """RMS per channel, shape `(C,)` float64; vector components share their joint RMS."""
        if self._count == 0:
            raise ValueError("no data seen: cannot compute channel statistics")
        rms = torch.empty_like(self._sumsq)
        for group in self.layout.scale_groups():
            idx = list(group)
            rms[idx] = (self._sumsq[idx].sum() / (self._count * len(idx))).sqrt()
        if (rms <= 0).any():
            zero = [self.layout.names[i] for i in range(len(rms)) if rms[i] <= 0]
            raise ValueError(f"channels {zero} are identically zero: RMS undefined")
        return rms


def channel_rms(x: torch.Tensor, layout: FieldLayout) -> torch.Tensor:
    """RMS of each channel of ``x`` `(..., C, H, W)` → `(C,)` float64, vectors sharing one RMS."""
    acc = RunningRMS(layout)
    acc.update(x)
    return acc.compute()
