"""symaudit.physics: the compressible-Euler data engine (solver and initial conditions)."""

from symaudit.physics import initial_conditions as initial_conditions
from symaudit.physics.euler import (
    InvalidStateError,
    SolverError,
    block_average,
    conservative_to_primitive,
    evolve,
    pressure,
    primitive_to_conservative,
)

__all__ = [
    "InvalidStateError",
    "SolverError",
    "block_average",
    "conservative_to_primitive",
    "evolve",
    "pressure",
    "primitive_to_conservative",
]
