"""Test app whose import fails."""
raise RuntimeError("this app cannot be imported")
