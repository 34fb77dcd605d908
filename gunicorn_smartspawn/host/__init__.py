"""Everything smartspawn changes in gunicorn, in one place (patches).
"""
