"""Input validation shared by the emulators (clear errors instead of cryptic conv failures)."""

from __future__ import annotations

import torch


def check_state(x: torch.Tensor, channels: int, *, multiple: int = 1, what: str = "model") -> None:
    """Raise ValueError unless ``x`` is `(B, channels, H, W)`, H and W divisible by ``multiple``."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{what} expects input shaped (B, {channels}, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"{what} needs H and W divisible by {multiple} (its total down-sampling stride), "
            f"got {h}x{w}"
        )
