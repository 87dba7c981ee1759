"""symaudit.diagnostics"""

from symaudit.diagnostics.equivariance import (  # noqa: F401
    EquivarianceFileError,
    EquivarianceResult,
    equivariance_error,
)
