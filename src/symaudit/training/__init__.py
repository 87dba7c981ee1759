"""symaudit.training"""
