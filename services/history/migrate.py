"""Apply Ridemesh's Alembic migrations programmatically, with no alembic.ini."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic Config pointing at our migrations and the given postgresql+asyncpg URL."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not a main option: ConfigParser would choke on '%' in passwords.
    config.attributes["database_url"] = database_url
    return config


def run_migrations(database_url: str) -> None:
    """Upgrade the database to the newest revision; a no-op when it is already there."""
    command.upgrade(alembic_config(database_url), "head")


async def run_migrations_async(database_url: str) -> None:
    """run_migrations from async code: in a thread, because env.py starts its own event loop."""
    await asyncio.to_thread(run_migrations, database_url)
