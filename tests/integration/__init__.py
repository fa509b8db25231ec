"""Test package (lets mypy tell the conftest modules apart)."""
