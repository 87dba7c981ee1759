"""symaudit.diagnostics"""

from symaudit.diagnostics.equivariance import (  # noqa: F401
    EquivarianceFileError,
    EquivarianceResult,
    equivariance_error,
)
from symaudit.diagnostics.influence import (  # noqa: F401
    InfluenceFileError,
    InfluenceResult,
    influence,
    influence_sweep,
)
from symaudit.diagnostics.krylov import (  # noqa: F401
    ConvergenceWarning,
    NystromPreconditioner,
    PrecisionWarning,
    cg,
)
from symaudit.diagnostics.metric import MetricOperator  # noqa: F401
