"""symaudit.diagnostics"""
