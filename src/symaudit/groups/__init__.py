"""symaudit.groups"""
