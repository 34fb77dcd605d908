"""Benchmarks for gunicorn_smartspawn (not part of the installed package)."""
