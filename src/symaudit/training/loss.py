"""Scaled mean squared error (SMSE), the training and audit loss.

    SMSE(pred, target) = mean_{b, c, pixels} (pred - target)^2 / rms_c^2

with rms_c the training-set RMS of channel c (vector components share one rms, so the loss is
invariant under D4 acting on both arguments).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SMSE"]


class SMSE(nn.Module):
    """Scaled MSE with fixed per-channel scales.

    Args:
        channel_rms: `(C,)` positive scales, e.g. from `symaudit.data.stats.channel_rms`.

    ``loss(pred, target)`` takes `(..., C, H, W)` tensors and returns the mean over every
    entry (a scalar); ``loss.per_sample`` returns one value per leading index. ``reduction``
    is ``"mean"`` (read by curvature libraries such as curvlinops).
    """

    reduction = "mean"

    def __init__(self, channel_rms: torch.Tensor) -> None:
        super().__init__()
        rms = torch.as_tensor(channel_rms, dtype=torch.float64).detach().clone()
        if rms.ndim != 1 or rms.numel() == 0:
            raise ValueError(f"channel_rms must be a non-empty 1D tensor, got {tuple(rms.shape)}")
        if not torch.isfinite(rms).all() or (rms <= 0).any():
            raise ValueError(f"channel_rms must be finite and positive, got {rms.tolist()}")
        self.register_buffer("channel_rms", rms)

    @property
    def num_channels(self) -> int:
        return self.channel_rms.numel()

    def channel_weights(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """1 / rms_c^2 shaped `(C, 1, 1)`, ready to broadcast over `(..., C, H, W)`."""
        return self.channel_rms.to(device=device, dtype=dtype).pow(-2).view(-1, 1, 1)

    def _weighted_sq(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if pred.ndim < 3 or pred.shape[-3] != self.num_channels:
            raise ValueError(
                f"expected (..., {self.num_channels}, H, W) tensors, got {tuple(pred.shape)}"
            )
        return (pred - target).square() * self.channel_weights(pred.dtype, pred.device)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._weighted_sq(pred, target).mean()

    def per_sample(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """SMSE of each sample: `(B, C, H, W)` pairs → `(B,)`."""
        return self._weighted_sq(pred, target).flatten(start_dim=-3).mean(dim=-1)

    def extra_repr(self) -> str:
        return f"channel_rms={[round(v, 6) for v in self.channel_rms.tolist()]}"
