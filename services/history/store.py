"""History store: driver fixes in PostGIS, daily range partitions, idempotent COPY ingest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from operator import attrgetter
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.domain.micros import from_micros
from services.domain.trips import Fix, FixKey
from services.history.read_ahead import prefetched

PARENT_TABLE = "driver_locations"

# One key for every process and replica: partition creation is serialised cluster-wide so that
# CREATE TABLE IF NOT EXISTS never races itself (the catalog check and the insert are not atomic).
_PARTITION_LOCK_KEY = 0x52_4D_50_41  # "RMPA"

# Session-local staging table, created once per pooled connection and emptied at every commit,
# so each batch costs no catalog churn (unlike CREATE ... ON COMMIT DROP per batch).
_STAGE_TABLE = "ridemesh_fix_stage"
# Named like FixRow's fields, so one attrgetter turns a FixRow into a COPY record in this order.
FIX_COLUMNS = (
    "driver_id",
    "latitude",
    "longitude",
    "heading_deg",
    "speed_mps",
    "accuracy_m",
    "recorded_at",
    "seq",
    "received_at",
)
_as_record = attrgetter(*FIX_COLUMNS)
_CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGE_TABLE} (
    driver_id text NOT NULL,
    latitude double precision NOT NULL,
    longitude double precision NOT NULL,
    heading_deg real,
    speed_mps real,
    accuracy_m real,
    recorded_at timestamptz NOT NULL,
    seq bigint NOT NULL,
    received_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS
"""
# ST_MakePoint takes (x, y) = (longitude, latitude); the argument order is the classic bug here.
_MERGE_STAGE = f"""
INSERT INTO {PARENT_TABLE}
    (driver_id, location, heading_deg, speed_mps, accuracy_m, recorded_at, seq, received_at)
SELECT driver_id, ST_SetSRID(ST_MakePoint(longitude, latitude), 4326)::geography,
       heading_deg, speed_mps, accuracy_m, recorded_at, seq, received_at
FROM {_STAGE_TABLE}
ON CONFLICT DO NOTHING
"""
_SELECT_FIXES = f"""
SELECT driver_id, ST_Y(location::geometry), ST_X(location::geometry), heading_deg, speed_mps,
       accuracy_m, recorded_at, seq, received_at
FROM {PARENT_TABLE}
WHERE driver_id = $1 AND recorded_at >= $2 AND recorded_at < $3
ORDER BY recorded_at, seq
"""

# Track pages: keyset pagination on the primary key (driver_id, recorded_at, seq), so every page
# is one index range scan however deep it is. The recorded_at bounds are separate predicates so
# the planner (or the executor, for a generic plan) prunes partitions outside the range. Optional
# columns are coalesced so a FixRow never holds None.
# Which of the given (driver_id, recorded_at, seq) keys are stored: primary-key probes, with the
# time range bounding the partitions searched.
_STORED_KEYS = f"""
SELECT l.driver_id, l.recorded_at, l.seq
FROM {PARENT_TABLE} AS l
JOIN unnest($1::text[], $2::timestamptz[], $3::bigint[]) AS k(driver_id, recorded_at, seq)
  ON l.driver_id = k.driver_id AND l.recorded_at = k.recorded_at AND l.seq = k.seq
WHERE l.recorded_at BETWEEN $4 AND $5
"""

_PAGE_COLUMNS = """driver_id, ST_Y(location::geometry), ST_X(location::geometry),
       coalesce(heading_deg, 0), coalesce(speed_mps, 0), coalesce(accuracy_m, 0),
       recorded_at, seq, received_at"""
SELECT_FIXES_PAGE = f"""
SELECT {_PAGE_COLUMNS}
FROM {PARENT_TABLE}
WHERE driver_id = $1 AND recorded_at >= $2 AND recorded_at < $3
ORDER BY recorded_at, seq
LIMIT $4
"""
SELECT_FIXES_PAGE_AFTER = f"""
SELECT {_PAGE_COLUMNS}
FROM {PARENT_TABLE}
WHERE driver_id = $1 AND recorded_at >= $2 AND recorded_at < $3 AND (recorded_at, seq) > ($4, $5)
ORDER BY recorded_at, seq
LIMIT $6
"""

# Trip detection's read: only the five columns it uses, the time as integer microseconds (no
# datetime per row), strictly after a (recorded_at, seq) key. The micros come from PostgreSQL's
# exact numeric epoch.
SELECT_MOTION_PAGE = f"""
SELECT (extract(epoch FROM recorded_at) * 1000000)::bigint, seq,
       ST_Y(location::geometry), ST_X(location::geometry), coalesce(speed_mps, 0)
FROM {PARENT_TABLE}
WHERE driver_id = $1 AND recorded_at >= $2 AND recorded_at < $3 AND (recorded_at, seq) > ($2, $4)
ORDER BY recorded_at, seq
LIMIT $5
"""
_LOWEST_SEQ = -(2**63)


@dataclass(frozen=True, slots=True)
class FixRow:
    """One stored GPS fix; times are tz-aware UTC."""

    driver_id: str
    latitude: float
    longitude: float
    heading_deg: float
    speed_mps: float
    accuracy_m: float
    recorded_at: datetime
    seq: int
    received_at: datetime


def partition_name(day: date) -> str:
    """Name of the daily partition holding fixes recorded on `day` (UTC)."""
    return f"{PARENT_TABLE}_p{day:%Y%m%d}"


def partition_bounds(day: date) -> tuple[datetime, datetime]:
    """Half-open range [day 00:00 UTC, next day 00:00 UTC) of the partition for `day`."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def utc_day(moment: datetime) -> date:
    """UTC calendar day of an aware datetime (partitions are cut at UTC midnight, not local)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: fixes must carry a timezone")
    return moment.astimezone(UTC).date()


def days_spanned(rows: Iterable[FixRow]) -> set[date]:
    """UTC days touched by the rows' recorded_at, i.e. the partitions a batch needs."""
    return {utc_day(row.recorded_at) for row in rows}


def create_engine(database_url: str) -> AsyncEngine:
    """Async engine for a postgresql+asyncpg URL, pooled for a handful of concurrent writers."""
    return create_async_engine(
        database_url,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        # Recycle so a failover or a restarted PgBouncer does not leave stale sockets in the pool.
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": "ridemesh"}},
    )


@asynccontextmanager
async def raw_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The asyncpg connection under a pooled SQLAlchemy connection: COPY, advisory locks and
    plain SQL with asyncpg's own parameter handling need the driver itself."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        try:
            yield raw.driver_connection
        except asyncpg.InternalClientError:
            # The driver connection was left mid-operation (its server went away under a
            # query, or a cancel landed mid-protocol): it must never be handed out again.
            await conn.invalidate()
            raise


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[Any]:
    """raw_connection inside one transaction, committed when the block ends without error."""
    async with raw_connection(engine) as apg, apg.transaction():
        yield apg


def _is_lost_creation_race(exc: asyncpg.PostgresError) -> bool:
    """True for the errors a concurrent creator of the same partition makes us see."""
    if isinstance(exc, asyncpg.DuplicateTableError):
        return True
    if isinstance(exc, asyncpg.InvalidObjectDefinitionError):
        return "would overlap" in str(exc)
    # The catalog insert of the new table's row type can collide before IF NOT EXISTS sees it.
    return isinstance(exc, asyncpg.UniqueViolationError) and "pg_type" in str(exc)


class HistoryStore:
    """Writes and reads driver fixes in the partitioned `driver_locations` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._ensured: set[date] = set()
        # One creator per process at a time; others wait and then find the day cached.
        self._partition_lock = asyncio.Lock()

    def _driver_connection(self) -> AbstractAsyncContextManager[Any]:
        return raw_connection(self._engine)

    async def ensure_partitions(self, days: Iterable[date]) -> None:
        """Create the daily partitions for `days` unless this process already did."""
        missing = sorted(set(days) - self._ensured)
        if not missing:
            return
        async with self._partition_lock, self._driver_connection() as apg:
            for day in missing:
                if day not in self._ensured:
                    await self._create_partition(apg, day)
                    self._ensured.add(day)

    async def _create_partition(self, apg: Any, day: date) -> None:
        start, end = partition_bounds(day)
        ddl = (
            f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF {PARENT_TABLE} "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )
        try:
            async with apg.transaction():
                await apg.execute("SELECT pg_advisory_xact_lock($1)", _PARTITION_LOCK_KEY)
                await apg.execute(ddl)
        except asyncpg.PostgresError as exc:
            if not _is_lost_creation_race(exc):
                raise

    async def ensure_partitions_ahead(self, today: date, days_ahead: int) -> None:
        """Create partitions for `today` and the next `days_ahead` days, before fixes need them."""
        await self.ensure_partitions(today + timedelta(days=n) for n in range(days_ahead + 1))

    async def insert_fixes(self, rows: Sequence[FixRow]) -> int:
        """Store rows once each (re-sent rows are ignored); returns how many were new."""
        if not rows:
            return 0
        await self.ensure_partitions(days_spanned(rows))
        # Binary COPY into the stage is what makes 20k+ rows/s cheap. attrgetter, not
        # dataclasses.astuple: astuple deep-copies every field and was 100x slower than the COPY.
        records = [_as_record(row) for row in rows]
        async with self._driver_connection() as apg, apg.transaction():
            await apg.execute(_CREATE_STAGE)
            await apg.copy_records_to_table(_STAGE_TABLE, records=records, columns=FIX_COLUMNS)
            status: str = await apg.execute(_MERGE_STAGE)
        # Status is "INSERT 0 <n>"; n excludes rows skipped by ON CONFLICT DO NOTHING.
        return int(status.rsplit(" ", 1)[1])

    async def stored_keys(
        self, keys: Sequence[tuple[str, datetime, int]]
    ) -> set[tuple[str, datetime, int]]:
        """Which of `keys` (driver_id, recorded_at, seq) are committed: the durability check
        behind every ack."""
        if not keys:
            return set()
        drivers, times, seqs = zip(*keys, strict=True)
        async with self._driver_connection() as apg:
            records = await apg.fetch(
                _STORED_KEYS, list(drivers), list(times), list(seqs), min(times), max(times)
            )
        return {(r["driver_id"], r["recorded_at"], r["seq"]) for r in records}

    async def count_fixes(self, driver_id: str) -> int:
        """Number of stored fixes for a driver."""
        async with self._driver_connection() as apg:
            count: int = await apg.fetchval(
                f"SELECT count(*) FROM {PARENT_TABLE} WHERE driver_id = $1", driver_id
            )
        return count

    async def max_seq(self, driver_id: str) -> int:
        """Highest stored seq for a driver, 0 when none (what acks report as committed)."""
        async with self._driver_connection() as apg:
            seq: int = await apg.fetchval(
                f"SELECT coalesce(max(seq), 0) FROM {PARENT_TABLE} WHERE driver_id = $1",
                driver_id,
            )
        return seq

    async def list_fixes(self, driver_id: str, start: datetime, end: datetime) -> list[FixRow]:
        """A driver's fixes recorded in [start, end), oldest first."""
        async with self._driver_connection() as apg:
            records = await apg.fetch(_SELECT_FIXES, driver_id, start, end)
        return [FixRow(*record) for record in records]

    async def fixes_page(
        self,
        driver_id: str,
        start: datetime,
        end: datetime,
        after: tuple[datetime, int] | None,
        limit: int,
    ) -> list[FixRow]:
        """Up to `limit` of a driver's fixes in [start, end), ordered by (recorded_at, seq),
        strictly after the key `after` (the last row of the previous page) when given."""
        async with self._driver_connection() as apg:
            if after is None:
                records = await apg.fetch(SELECT_FIXES_PAGE, driver_id, start, end, limit)
            else:
                # The cursor is the lower time bound too: later pages prune earlier partitions.
                lower = max(start, after[0])
                records = await apg.fetch(
                    SELECT_FIXES_PAGE_AFTER, driver_id, lower, end, after[0], after[1], limit
                )
        return [FixRow(*record) for record in records]

    def motion_pages(
        self,
        driver_id: str,
        start: datetime,
        end: datetime,
        first: FixKey | None,
        page_rows: int,
        first_rows: int | None = None,
    ) -> AsyncGenerator[list[Fix]]:
        """A driver's fixes in [start, end) from the key `first` on (inclusive; None: from
        `start`), in (recorded_at, seq) order, as keyset pages of up to `page_rows`. The next
        page is fetched while the caller works on the current one. With `first_rows`, pages
        start that small and double up to `page_rows`: a caller that may stop early (a page of
        trips) reads little past where it stops."""
        return prefetched(self._motion_pages(driver_id, start, end, first, page_rows, first_rows))

    async def _motion_pages(
        self,
        driver_id: str,
        start: datetime,
        end: datetime,
        first: FixKey | None,
        page_rows: int,
        first_rows: int | None,
    ) -> AsyncGenerator[list[Fix]]:
        rows = page_rows if first_rows is None else min(first_rows, page_rows)
        if first is None:
            lower, seq = start, _LOWEST_SEQ
        else:
            lower, seq = max(start, from_micros(first[0])), first[1] - 1
        while True:
            page = await self._motion_page(driver_id, lower, end, seq, rows)
            yield page
            if len(page) < rows:
                return
            last, rows = page[-1], min(2 * rows, page_rows)
            lower, seq = from_micros(last.micros), last.seq

    async def _motion_page(
        self, driver_id: str, after: datetime, end: datetime, after_seq: int, limit: int
    ) -> list[Fix]:
        # The key's time is the lower bound too, so later pages prune earlier partitions.
        async with self._driver_connection() as apg:
            records = await apg.fetch(SELECT_MOTION_PAGE, driver_id, after, end, after_seq, limit)
        make = Fix._make  # from the record as it is: half the cost of Fix(*record)
        return [make(record) for record in records]

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled asyncpg connection, for work that needs one session (advisory locks, COPY)."""
        async with self._driver_connection() as apg:
            yield apg

    async def dispose(self) -> None:
        """Close the engine's pooled connections."""
        await self._engine.dispose()
