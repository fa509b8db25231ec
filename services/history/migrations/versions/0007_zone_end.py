"""Zones that end: an optional expiry time, and deletion as an end whose EXITs are still owed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A deleted or expired zone keeps its row (ended_at set, and why) until every driver inside
    # was sent its EXIT; then the row goes. Live zones are those not ended and not expired.
    op.execute(
        """
        ALTER TABLE geofences
          ADD COLUMN expire_time timestamptz,
          ADD COLUMN ended_at timestamptz,
          ADD COLUMN end_reason text
        """
    )
    op.execute(
        "CREATE INDEX geofences_ending ON geofences (expire_time) "
        "WHERE ended_at IS NULL AND expire_time IS NOT NULL"
    )
    op.execute("CREATE INDEX geofences_ended ON geofences (ended_at) WHERE ended_at IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX geofences_ended")
    op.execute("DROP INDEX geofences_ending")
    op.execute(
        "ALTER TABLE geofences DROP COLUMN expire_time, DROP COLUMN ended_at, DROP COLUMN end_reason"
    )
