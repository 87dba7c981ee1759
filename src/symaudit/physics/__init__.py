"""symaudit.physics"""
