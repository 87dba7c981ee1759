"""The base of every error symaudit reports to its user.

Library errors (bad settings, corrupt files, non-finite numbers, a busy output) derive from
`SymauditError`; the command line prints any of them — and any `OSError` from the file
system, such as a full disk or a read-only directory — as one line and exits with code 2.
"""

from __future__ import annotations

__all__ = ["BusyError", "NonFiniteError", "SymauditError"]


class SymauditError(Exception):
    """A problem the user can act on; its message names what is wrong and where."""


class NonFiniteError(SymauditError, ValueError):
    """A tensor that must be finite holds NaN or infinity (message names the first one)."""


class BusyError(SymauditError):
    """Another symaudit process is writing the same output."""
