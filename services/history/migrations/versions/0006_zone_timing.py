"""A zone's event timing: entry delay, dwell time and boundary hysteresis.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Zeros keep the behaviour zones had before: ENTER and EXIT at the first fix across the line.
    op.execute(
        """
        ALTER TABLE geofences
          ADD COLUMN entry_delay_s double precision NOT NULL DEFAULT 0
            CHECK (entry_delay_s >= 0 AND entry_delay_s <= 86400),
          ADD COLUMN dwell_s double precision NOT NULL DEFAULT 0
            CHECK (dwell_s >= 0 AND dwell_s <= 604800),
          ADD COLUMN hysteresis_m double precision NOT NULL DEFAULT 0
            CHECK (hysteresis_m >= 0 AND hysteresis_m <= 1000)
        """
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE geofences DROP COLUMN entry_delay_s, DROP COLUMN dwell_s, "
        "DROP COLUMN hysteresis_m"
    )
