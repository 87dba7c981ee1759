"""symaudit.models: emulators mapping a state `(B, 4, H, W)` to the next one.

`build("unet-small")` builds a preset; `PRESETS` lists them. Architectures: `UNet` (residual,
periodic padding), `ViT` (learned absolute position embedding — symmetry-breaking on purpose),
`D4GCNN` (exactly D4- and shift-equivariant control).
"""

from symaudit.models.equivariant import D4GCNN, GroupConv2d
from symaudit.models.registry import (
    ARCHITECTURES,
    PRESETS,
    Preset,
    build,
    build_from_config,
    model_config,
    num_parameters,
)
from symaudit.models.unet import UNet
from symaudit.models.vit import ViT

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "D4GCNN",
    "GroupConv2d",
    "Preset",
    "UNet",
    "ViT",
    "build",
    "build_from_config",
    "model_config",
    "num_parameters",
]
