"""A ride may move to DRIVER_ARRIVED by itself when its driver is at the pickup.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE rides ADD COLUMN auto_arrive boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    op.execute("ALTER TABLE rides DROP COLUMN auto_arrive")
