"""symaudit.report: figures, findings and the HTML report from audit directories.

`build_report(audit_dirs, out)` writes PNG/SVG figures, ``report.json`` and ``index.html``.
"""

from symaudit.report.findings import collect, findings, readings, summary
from symaudit.report.html import build_report

__all__ = ["build_report", "collect", "findings", "readings", "summary"]
