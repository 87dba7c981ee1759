"""symaudit: has your neural PDE emulator learned the symmetries of the physics?

Public surface (see README): `FieldLayout`, `SMSE`, and the subpackages `physics`, `data`,
`groups`, `models`, `training`, `diagnostics`, `report`.
"""

from symaudit.fields import Channel, FieldLayout, LayoutError
from symaudit.training.loss import SMSE

__version__ = "0.1.0"

__all__ = ["SMSE", "Channel", "FieldLayout", "LayoutError", "__version__"]
