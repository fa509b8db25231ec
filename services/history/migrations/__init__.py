"""Alembic migrations for Ridemesh's PostgreSQL schema (run through services.history.migrate)."""
