"""Geofences: zones as PostGIS MultiPolygons, and a revision counter replicas poll cheaply.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # geometry (planar degrees), not geography: containment of a point in a polygon is what we ask,
    # and GEOS in the replicas' in-memory index answers it the same planar way.
    op.execute(
        """
        CREATE TABLE geofences (
            geofence_id  text PRIMARY KEY,
            display_name text NOT NULL,
            geom         geometry(MultiPolygon, 4326) NOT NULL,
            geojson      text NOT NULL,
            labels       jsonb NOT NULL DEFAULT '{}',
            create_time  timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX geofences_geom_gist ON geofences USING gist (geom)")
    # jsonb_path_ops serves `labels @> '{"k": "v"}'` (the label filter) with a smaller index.
    op.execute("CREATE INDEX geofences_labels_gin ON geofences USING gin (labels jsonb_path_ops)")
    # Keyset pagination walks (create_time, geofence_id) in order.
    op.execute("CREATE INDEX geofences_create_time_id ON geofences (create_time, geofence_id)")
    # One row, bumped in the same transaction as every change, so a replica compares one number
    # to know whether its index is stale, and reads the number and the zones from one snapshot.
    op.execute(
        """
        CREATE TABLE geofence_revision (
            singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            revision  bigint NOT NULL
        )
        """
    )
    op.execute("INSERT INTO geofence_revision (revision) VALUES (0)")
    # Triggers, so changes made by hand (psql) are noticed as well as the service's. Per row, so a
    # DELETE of an unknown id changes nothing and sends no replica reloading; TRUNCATE has no rows.
    op.execute(
        """
        CREATE FUNCTION geofences_bump_revision() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE geofence_revision SET revision = revision + 1;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER geofences_changed
        AFTER INSERT OR UPDATE OR DELETE ON geofences
        FOR EACH ROW EXECUTE FUNCTION geofences_bump_revision()
        """
    )
    op.execute(
        """
        CREATE TRIGGER geofences_truncated
        AFTER TRUNCATE ON geofences
        FOR EACH STATEMENT EXECUTE FUNCTION geofences_bump_revision()
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS geofences")
    op.execute("DROP FUNCTION IF EXISTS geofences_bump_revision()")
    op.execute("DROP TABLE IF EXISTS geofence_revision")
