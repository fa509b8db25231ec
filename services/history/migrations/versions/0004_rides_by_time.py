"""Rides listed across every rider and driver (ops' view), newest first.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

def upgrade() -> None:
    # ListRides with no rider or driver walks (create_time, ride_id) newest first. The live map
    # asks for the open rides, which are the newest, so the walk stops early.
    op.execute("CREATE INDEX rides_time ON rides (create_time DESC, ride_id DESC)")


def downgrade() -> None:
    op.execute("DROP INDEX rides_time")
