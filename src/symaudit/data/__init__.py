"""symaudit.data"""
