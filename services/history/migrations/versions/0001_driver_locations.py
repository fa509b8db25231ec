"""Driver fix history: PostGIS and the driver_locations table, range-partitioned by day.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    # The partition key (recorded_at) must be in the primary key; seq in it makes re-sent fixes
    # collide, which is what makes ON CONFLICT DO NOTHING an idempotent insert. The PK's btree
    # also serves "a driver's track between two times" (driver_id, recorded_at).
    op.execute(
        """
        CREATE TABLE driver_locations (
            driver_id   text NOT NULL,
            location    geography(Point, 4326) NOT NULL,
            heading_deg real,
            speed_mps   real,
            accuracy_m  real,
            recorded_at timestamptz NOT NULL,
            seq         bigint NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (driver_id, recorded_at, seq)
        ) PARTITION BY RANGE (recorded_at)
        """
    )
    # Declared on the parent, so every partition (created later by the service) gets its own copy.
    op.execute(
        "CREATE INDEX driver_locations_location_gist ON driver_locations USING gist (location)"
    )
    # Fixes arrive roughly in time order, so BRIN on recorded_at is tiny and prunes well.
    op.execute(
        "CREATE INDEX driver_locations_recorded_at_brin ON driver_locations "
        "USING brin (recorded_at)"
    )


def downgrade() -> None:
    # Dropping the parent drops every partition with it. PostGIS stays: other tables may use it.
    op.execute("DROP TABLE IF EXISTS driver_locations")
