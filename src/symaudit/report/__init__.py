"""symaudit.report"""
