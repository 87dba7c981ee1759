"""symaudit.models"""
