"""The `smartspawn` command (main) and `smartspawn status` (status).
"""
