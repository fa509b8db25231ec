"""Integration fixtures: a fresh, migrated PostGIS database per module."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture(scope="module")
def database_url(make_database: Callable[[], str]) -> str:
    """postgresql+asyncpg URL of a new database with every migration applied."""
    return make_database()
