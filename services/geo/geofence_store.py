"""Geofence store: zones in the PostGIS `geofences` table, keyset pages and point lookups."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import shapely
from sqlalchemy.ext.asyncio import AsyncEngine

from services.geo.zone_index import Zone, ZoneTiming
from services.geo.zones import ParsedGeofence
from services.history.store import raw_connection

_COLUMNS = (
    "geofence_id, display_name, geojson, labels::text, create_time, "
    "entry_delay_s, dwell_s, hysteresis_m, expire_time"
)
# A zone is live until it is deleted or its expiry time passes.
_LIVE = "ended_at IS NULL AND (expire_time IS NULL OR expire_time > now())"

_INSERT = f"""
INSERT INTO geofences (
  geofence_id, display_name, geom, geojson, labels, entry_delay_s, dwell_s, hysteresis_m,
  expire_time
)
VALUES ($1, $2, ST_Multi(ST_GeomFromWKB($3::bytea, 4326)), $4, $5::jsonb, $6, $7, $8, $9)
RETURNING {_COLUMNS}
"""
_SELECT_ONE = f"SELECT {_COLUMNS} FROM geofences WHERE geofence_id = $1 AND {_LIVE}"
# Keyset pagination: the row comparison lets the (create_time, geofence_id) btree serve both the
# bound and the order. Conditions are fixed fragments joined as needed (never user text), so
# each shape gets its own plan instead of one generic plan full of `$1 IS NULL OR ...`.
_AFTER = "(create_time, geofence_id) > (${}::timestamptz, ${}::text)"
_WITH_LABEL = "labels @> ${}::jsonb"  # served by the GIN index
_PAGE = (
    "SELECT {columns} FROM geofences WHERE {where} ORDER BY create_time, geofence_id LIMIT ${limit}"
)
# (x, y) is (longitude, latitude). ST_Intersects, not ST_Contains: a point on the boundary is in
# the zone, as in the in-memory ZoneIndex; both use the GiST index.
_SELECT_CONTAINING = f"""
SELECT {_COLUMNS} FROM geofences
WHERE ST_Intersects(geom, ST_SetSRID(ST_MakePoint($2, $1), 4326)) AND {_LIVE}
ORDER BY create_time, geofence_id
"""
_ZONE_COLUMNS = (
    "geofence_id, display_name, labels::text, ST_AsBinary(geom), entry_delay_s, dwell_s, "
    "hysteresis_m"
)
_SELECT_ZONES = f"""
SELECT {_ZONE_COLUMNS} FROM geofences WHERE {_LIVE} ORDER BY create_time, geofence_id
"""
# Ending: deletion marks the zone ended (its EXITs owed) unless it already was.
_END = f"""
UPDATE geofences SET ended_at = now(), end_reason = $2
WHERE geofence_id = $1 AND {_LIVE}
"""
_EXPIRE = """
UPDATE geofences SET ended_at = now(), end_reason = 'zone_expired'
WHERE ended_at IS NULL AND expire_time <= now()
"""
_SELECT_ENDED = f"""
SELECT {_ZONE_COLUMNS}, end_reason, ended_at FROM geofences WHERE ended_at IS NOT NULL
ORDER BY ended_at LIMIT $1
"""
_SELECT_REVISION = "SELECT revision FROM geofence_revision"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last zone's (create_time, geofence_id)."""

    create_time: datetime
    geofence_id: str


@dataclass(frozen=True, slots=True)
class StoredGeofence:
    """A zone as stored; `geojson` is the canonical text of what the client sent."""

    geofence_id: str
    display_name: str
    geojson: str
    labels: Mapping[str, str] = field(default_factory=dict)
    create_time: datetime | None = None
    timing: ZoneTiming = field(default_factory=ZoneTiming)
    expire_time: datetime | None = None

    @property
    def cursor(self) -> Cursor:
        assert self.create_time is not None
        return Cursor(self.create_time, self.geofence_id)


# Aliases, because inside GeofenceStore the name `list` is its method, not the builtin.
Geofences = list[StoredGeofence]
Zones = list[Zone]
Ended = list["EndedZone"]


@dataclass(frozen=True, slots=True)
class EndedZone:
    """A zone deleted or expired whose drivers inside are still owed their EXIT."""

    zone: Zone
    reason: str
    ended_at: datetime


def _stored(record: Any) -> StoredGeofence:
    geofence_id, display_name, geojson, labels, create_time, delay, dwell, margin, expire = record
    timing = ZoneTiming(delay, dwell, margin)
    return StoredGeofence(
        geofence_id, display_name, geojson, json.loads(labels), create_time, timing, expire
    )


def _zone(record: Any) -> Zone:
    geofence_id, display_name, labels, wkb, delay, dwell, margin = record[:7]
    timing = ZoneTiming(delay, dwell, margin)
    return Zone(geofence_id, display_name, json.loads(labels), shapely.from_wkb(wkb), timing)


def _page_query(
    limit: int, after: Cursor | None, label: tuple[str, str] | None
) -> tuple[str, list[Any]]:
    conditions: list[str] = [_LIVE]
    args: list[Any] = []
    if after is not None:
        conditions.append(_AFTER.format(len(args) + 1, len(args) + 2))
        args += [after.create_time, after.geofence_id]
    if label is not None:
        conditions.append(_WITH_LABEL.format(len(args) + 1))
        args.append(json.dumps({label[0]: label[1]}))
    where = " AND ".join(conditions)
    args.append(limit)
    return _PAGE.format(columns=_COLUMNS, where=where, limit=len(args)), args


class GeofenceStore:
    """Creates, reads, pages through and deletes zones; answers which zones hold a point."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def _connection(self) -> AbstractAsyncContextManager[Any]:
        return raw_connection(self._engine)

    async def create(self, parsed: ParsedGeofence) -> StoredGeofence:
        """Stores a validated zone under a new UUID4 id."""
        async with self._connection() as apg:
            record = await apg.fetchrow(
                _INSERT,
                str(uuid.uuid4()),
                parsed.display_name,
                shapely.to_wkb(parsed.geometry),
                parsed.geojson,
                json.dumps(dict(parsed.labels)),
                parsed.timing.entry_delay_s,
                parsed.timing.dwell_s,
                parsed.timing.hysteresis_m,
                parsed.expire_time,
            )
        return _stored(record)

    async def get(self, geofence_id: str) -> StoredGeofence | None:
        async with self._connection() as apg:
            record = await apg.fetchrow(_SELECT_ONE, geofence_id)
        return None if record is None else _stored(record)

    async def list(
        self,
        page_size: int,
        after: Cursor | None = None,
        label: tuple[str, str] | None = None,
    ) -> tuple[Geofences, Cursor | None]:
        """Up to `page_size` zones after `after`, oldest first, and the cursor of the next page
        (None on the last page)."""
        query, args = _page_query(page_size + 1, after, label)
        async with self._connection() as apg:
            # One row more than asked tells whether another page exists without a count(*).
            records = await apg.fetch(query, *args)
        page = [_stored(record) for record in records[:page_size]]
        more = len(records) > page_size
        return page, (page[-1].cursor if more and page else None)

    async def delete(self, geofence_id: str) -> bool:
        """Ends a zone for good (its row stays until its EXITs are sent: see ended()); False
        when there was no live zone with that id."""
        async with self._connection() as apg:
            status: str = await apg.execute(_END, geofence_id, "zone_deleted")
        return status != "UPDATE 0"

    async def ended(self, limit: int = 100) -> Ended:
        """Zones that ended (deleted, or expired: those are marked here first) and still owe
        their EXITs, oldest end first."""
        async with self._connection() as apg:
            await apg.execute(_EXPIRE)
            records = await apg.fetch(_SELECT_ENDED, limit)
        return [EndedZone(_zone(record), record[7], record[8]) for record in records]

    async def forget(self, geofence_id: str) -> None:
        """Drops an ended zone's row once its EXITs are sent."""
        async with self._connection() as apg:
            await apg.execute(
                "DELETE FROM geofences WHERE geofence_id = $1 AND ended_at IS NOT NULL",
                geofence_id,
            )

    async def containing(self, latitude: float, longitude: float) -> Geofences:
        """Zones containing the point, boundary included, oldest first."""
        async with self._connection() as apg:
            records = await apg.fetch(_SELECT_CONTAINING, latitude, longitude)
        return [_stored(record) for record in records]

    async def all_zones(self) -> Zones:
        """Every zone with its geometry, for the in-memory index."""
        return (await self.snapshot())[1]

    async def revision(self) -> int:
        """A number that changes whenever any zone is created, changed or deleted."""
        async with self._connection() as apg:
            revision: int = await apg.fetchval(_SELECT_REVISION)
        return revision

    async def snapshot(self) -> tuple[int, Zones]:
        """The revision and every zone, read from one snapshot so the two agree."""
        async with (
            self._connection() as apg,
            apg.transaction(isolation="repeatable_read", readonly=True),
        ):
            revision: int = await apg.fetchval(_SELECT_REVISION)
            records = await apg.fetch(_SELECT_ZONES)
        return revision, [_zone(record) for record in records]
