"""A ride's Redis side effects are owed until applied: an outbox flag on the ride row.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Set in the same transaction as every state change; cleared once the change's effects in
    # Redis (the driver busy or free, the assignment, the open request, the announcement) are
    # applied. The dispatch sweeper applies what a failed Redis left owed.
    op.execute("ALTER TABLE rides ADD COLUMN effects_due boolean NOT NULL DEFAULT false")
    op.execute("CREATE INDEX rides_effects_due ON rides (update_time) WHERE effects_due")


def downgrade() -> None:
    op.execute("DROP INDEX rides_effects_due")
    op.execute("ALTER TABLE rides DROP COLUMN effects_due")
