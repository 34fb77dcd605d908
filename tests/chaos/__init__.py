"""Chaos suite: faults injected into a real `gunicorn -k smartspawn.Worker` under load.

A package on purpose: without this file, pytest imports tests/chaos/conftest.py under the
module name ``conftest`` and the top-level tests' ``from conftest import ...`` would find
this directory's conftest instead of tests/conftest.py.
"""
