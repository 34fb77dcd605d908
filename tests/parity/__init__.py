"""Parity suite: one scenario under plain gunicorn and under smartspawn, the same outcome.

A package for the same reason as tests/chaos: so that ``from conftest import ...`` in the
top-level tests finds tests/conftest.py, not this directory's.
"""
