"""Named model presets: architecture + constructor arguments, buildable from a name or from the
JSON-able config stored in a checkpoint (`model_config` ↔ `build_from_config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from symaudit.models.equivariant import D4GCNN
from symaudit.models.unet import UNet
from symaudit.models.vit import ViT

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "Preset",
    "build",
    "build_from_config",
    "model_config",
    "num_parameters",
]

ARCHITECTURES: dict[str, type[nn.Module]] = {"unet": UNet, "vit": ViT, "gcnn": D4GCNN}


@dataclass(frozen=True)
class Preset:
    """A named architecture configuration; ``kwargs`` go to the architecture's constructor."""

    name: str
    architecture: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_TINY_UNET = dict(width=2, mults=(1, 1, 1, 1, 1), blocks=1, norm_groups=1)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "unet-paper",
            "unet",
            dict(width=24, mults=(1, 2, 2, 2, 1), blocks=2, norm_groups=8),
            "residual UNet as in the paper (~12M, 4 down-samplings, width 24)",
        ),
        Preset(
            "vit-paper",
            "vit",
            dict(resolution=128, patch=8, width=256, depth=6, heads=8, mlp_ratio=4),
            "ViT as in the paper (~4.9M at 128², patch 8, 6 layers, width 256)",
        ),
        Preset(
            "unet-small",
            "unet",
            dict(width=8, mults=(1, 2, 2, 1, 1), blocks=1, norm_groups=4),
            "CPU-sized UNet (4 down-samplings)",
        ),
        Preset(
            "vit-small",
            "vit",
            dict(resolution=64, patch=8, width=64, depth=4, heads=4, mlp_ratio=4),
            "CPU-sized ViT (64², patch 8)",
        ),
        Preset(
            "gcnn-small",
            "gcnn",
            dict(channels=12, blocks=4, kernel_size=3, norm_groups=4),
            "exactly D4 × shift equivariant p4m G-CNN (12 regular channels)",
        ),
        Preset("unet-tiny", "unet", _TINY_UNET, "few-thousand-parameter UNet for dense tests"),
        Preset(
            "vit-tiny",
            "vit",
            dict(resolution=16, patch=4, width=12, depth=1, heads=2, mlp_ratio=2),
            "few-thousand-parameter ViT (16²) for dense tests",
        ),
        Preset(
            "gcnn-tiny",
            "gcnn",
            dict(channels=2, blocks=1, kernel_size=3, norm_groups=1),
            "few-thousand-parameter G-CNN for dense tests",
        ),
    ]
}


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """JSON-able description ``{"preset", "architecture", "kwargs"}`` of preset ``name`` with
    ``overrides`` applied (e.g. ``resolution=32`` for a ViT)."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in preset.kwargs.items()}
    kwargs.update(overrides)
    return {"preset": name, "architecture": preset.architecture, "kwargs": kwargs}


def build_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from `model_config` output (as stored in checkpoints); the model keeps
    its config in ``model.symaudit_config``."""
    try:
        cls = ARCHITECTURES[config["architecture"]]
        kwargs = dict(config["kwargs"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a model config: {config!r}") from exc
    try:
        model = cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for {config['architecture']}: {exc}") from exc
    model.symaudit_config = {
        "preset": config.get("preset"),
        "architecture": config["architecture"],
        "kwargs": kwargs,
    }
    return model


def build(name: str, **overrides: Any) -> nn.Module:
    """Build preset ``name`` (see `PRESETS`), constructor arguments overridden by ``overrides``.

    Every model maps `(B, 4, H, W) → (B, 4, H, W)` (the next state); parameters are float32 on
    CPU — move with ``.to(device, dtype)``."""
    return build_from_config(model_config(name, **overrides))


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (no forward pass needed: all shapes are fixed at build)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
