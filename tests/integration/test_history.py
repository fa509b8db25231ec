"""History store against a real PostgreSQL + PostGIS: migrations, idempotent COPY, partitions."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from services.history.migrate import alembic_config, run_migrations_async
from services.history.store import (
    FixRow,
    HistoryStore,
    create_engine,
    partition_bounds,
    partition_name,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

RECEIVED = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _fix(driver_id: str, recorded_at: datetime, seq: int, lat: float = 52.52) -> FixRow:
    return FixRow(driver_id, lat, 13.405, 90.0, 8.5, 4.0, recorded_at, seq, RECEIVED)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[HistoryStore]:
    history = HistoryStore(create_engine(database_url))
    yield history
    await history.dispose()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection for looking at what the store wrote."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


async def test_migrations_run_twice_are_idempotent(database_url: str, pg: Any) -> None:
    await run_migrations_async(database_url)
    await run_migrations_async(database_url)
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert await pg.fetchval("SELECT version_num FROM alembic_version") == head
    assert await pg.fetchval("SELECT to_regclass('driver_locations')::text") == "driver_locations"
    assert await pg.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'postgis'")


async def test_insert_stores_location_as_lat_lng(store: HistoryStore, pg: Any) -> None:
    t = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
    assert await store.insert_fixes([_fix("loc", t, 7, lat=-33.8688)]) == 1
    row = await pg.fetchrow(
        "SELECT ST_Y(location::geometry) AS lat, ST_X(location::geometry) AS lng, "
        "ST_SRID(location::geometry) AS srid, recorded_at, seq "
        "FROM driver_locations WHERE driver_id = 'loc'"
    )
    assert (row["lat"], row["lng"], row["srid"]) == (-33.8688, 13.405, 4326)
    assert (row["recorded_at"], row["seq"]) == (t, 7)


async def test_same_batch_twice_is_stored_once(store: HistoryStore) -> None:
    t = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    batch = [_fix("dup", t + timedelta(seconds=4 * i), i + 1) for i in range(500)]
    assert await store.insert_fixes(batch) == 500
    assert await store.insert_fixes(batch) == 0
    # A re-send mixed with new fixes counts only the new ones; in-batch repeats count once.
    more = [
        *batch[-10:],
        _fix("dup", t + timedelta(hours=1), 501),
        _fix("dup", t + timedelta(hours=1), 501),
    ]
    assert await store.insert_fixes(more) == 1
    assert await store.count_fixes("dup") == 501
    assert await store.max_seq("dup") == 501


async def test_empty_batch_and_unknown_driver(store: HistoryStore) -> None:
    assert await store.insert_fixes([]) == 0
    assert await store.count_fixes("nobody") == 0
    assert await store.max_seq("nobody") == 0


async def test_batch_spanning_midnight_lands_in_two_partitions(
    store: HistoryStore, pg: Any
) -> None:
    midnight = datetime(2026, 12, 2, tzinfo=UTC)
    batch = [_fix("span", midnight - timedelta(seconds=1), 1), _fix("span", midnight, 2)]
    assert await store.insert_fixes(batch) == 2
    rows = await pg.fetch(
        "SELECT seq, tableoid::regclass::text AS part FROM driver_locations "
        "WHERE driver_id = 'span' ORDER BY seq"
    )
    assert [(r["seq"], r["part"]) for r in rows] == [
        (1, partition_name(date(2026, 12, 1))),
        (2, partition_name(date(2026, 12, 2))),
    ]


async def test_concurrent_ensure_partitions_from_two_stores(database_url: str, pg: Any) -> None:
    days = [date(2027, 3, 1) + timedelta(days=n) for n in range(5)]
    first, second = (
        HistoryStore(create_engine(database_url)),
        HistoryStore(create_engine(database_url)),
    )
    try:
        await asyncio.gather(first.ensure_partitions(days), second.ensure_partitions(days))
        await asyncio.gather(first.ensure_partitions(days), second.ensure_partitions(days))
    finally:
        await first.dispose()
        await second.dispose()
    names = {partition_name(day) for day in days}
    found = await pg.fetch("SELECT to_regclass(n)::text FROM unnest($1::text[]) AS n", list(names))
    assert {r[0] for r in found} == names


async def test_ensure_partitions_tolerates_a_differently_named_overlap(
    store: HistoryStore, pg: Any
) -> None:
    # Another writer (or an operator) already covers the day under another name.
    day = date(2027, 4, 1)
    start, end = partition_bounds(day)
    await pg.execute(
        f"CREATE TABLE driver_locations_manual PARTITION OF driver_locations "
        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    )
    await store.ensure_partitions([day])
    assert await store.insert_fixes([_fix("manual", start + timedelta(hours=1), 1)]) == 1


async def test_ensure_partitions_ahead_creates_today_and_following_days(
    store: HistoryStore, pg: Any
) -> None:
    today = date(2027, 5, 10)
    await store.ensure_partitions_ahead(today, 3)
    expected = [partition_name(today + timedelta(days=n)) for n in range(4)]
    found = await pg.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'driver_locations'::regclass AND c.relname = ANY($1::text[])",
        expected,
    )
    assert sorted(r["relname"] for r in found) == expected


async def test_list_fixes_is_time_ordered_and_half_open(store: HistoryStore) -> None:
    start = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    batch = [_fix("track", start + timedelta(seconds=4 * i), i + 1) for i in range(50)]
    shuffled = random.Random(7).sample(batch, len(batch))
    await store.insert_fixes(shuffled)
    await store.insert_fixes([_fix("other", start, 1)])
    listed = await store.list_fixes("track", start, start + timedelta(seconds=4 * 40))
    assert listed == batch[:40]
    assert all(fix.recorded_at.tzinfo is not None for fix in listed)


async def test_partition_has_gist_and_brin_indexes(store: HistoryStore, pg: Any) -> None:
    day = date(2027, 6, 1)
    await store.ensure_partitions([day])
    methods = await pg.fetch(
        "SELECT am.amname FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam "
        "WHERE x.indrelid = $1::regclass",
        partition_name(day),
    )
    assert {r["amname"] for r in methods} >= {"gist", "brin", "btree"}
