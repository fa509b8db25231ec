"""History maintenance: partitions kept ahead; expired days archived to gzip CSV, then dropped.

Retention never DELETEs rows: a whole day's partition is archived, detached and dropped. Every step
is safe to repeat after a crash, and runs are serialised cluster-wide by an advisory lock:

1. archive the attached partition to `<archive_dir>/<partition>.csv.gz` (temp file, fsync, rename),
   unless a previous run already did;
2. DETACH PARTITION ... CONCURRENTLY (readers and writers of other days are not blocked); a
   detach interrupted by a crash is finished with DETACH ... FINALIZE;
3. count the detached table (no row can reach it any more) and check the archive holds as many
   rows, re-exporting if it holds fewer, and keeping both if it holds more (someone must look);
4. DROP TABLE.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import asyncpg
from sqlalchemy.exc import SQLAlchemyError

from services.history.store import FIX_COLUMNS, PARENT_TABLE, HistoryStore
from services.server.config import Settings
from services.server.failures import raise_if_cancelling

log = logging.getLogger(__name__)

# Session-level advisory lock held for a whole run; distinct from the partition-creation key.
MAINTENANCE_LOCK_KEY = 0x52_4D_4D_54  # "RMMT"

# The archive holds the columns of FixRow, in its order.
ARCHIVE_COLUMNS = FIX_COLUMNS
_PARTITION_NAME = re.compile(rf"{PARENT_TABLE}_p(\d{{8}})")

_LIST_PARTITIONS = f"""
SELECT c.relname, CASE WHEN i.inhdetachpending THEN 'detaching' ELSE 'attached' END
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = '{PARENT_TABLE}'::regclass
UNION ALL
SELECT c.relname, 'detached'
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind = 'r'
  AND c.relname ~ '^{PARENT_TABLE}_p[0-9]{{8}}$'
  AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
"""
# ST_Y/ST_X of the geography's point: latitude/longitude exactly as stored (float8 text output
# is round-trip exact). Ordered by the primary key so an archive's content is deterministic.
_EXPORT = """
SELECT driver_id, ST_Y(location::geometry) AS latitude, ST_X(location::geometry) AS longitude,
       heading_deg, speed_mps, accuracy_m, recorded_at, seq, received_at
FROM "{table}"
ORDER BY driver_id, recorded_at, seq
"""


class ArchiveMismatch(Exception):
    """An existing archive holds more rows than its partition: neither is touched."""


@dataclass(frozen=True, slots=True)
class ArchivedPartition:
    """A partition archived (or found already archived) and then dropped."""

    partition: str
    path: Path
    rows: int
    # True when a previous run had written the archive and this run only verified it.
    reused: bool


@dataclass(slots=True)
class MaintenanceReport:
    """What one run did; `locked_out` means another run held the lock and nothing was done."""

    locked_out: bool = False
    created: list[str] = field(default_factory=list)
    archived: list[ArchivedPartition] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report for people: one line per thing done."""
        if self.locked_out:
            return ["another maintenance run holds the lock; nothing done"]
        lines = [f"created partition {name}" for name in self.created]
        for item in self.archived:
            how = "verified existing archive" if item.reused else "archived"
            lines.append(f"{how} {item.partition}: {item.rows} rows in {item.path}")
        lines += [f"dropped partition {name}" for name in self.dropped]
        lines += [f"problem: {problem}" for problem in self.problems]
        return lines or ["nothing to do"]


def partition_day(name: str) -> date | None:
    """The UTC day of a partition named `driver_locations_pYYYYMMDD`, None for other names."""
    match = _PARTITION_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:  # 8 digits that are not a date, e.g. p20261340
        return None


def is_expired(day: date, today: date, retention_days: int) -> bool:
    """True when the whole day is older than the retention: day < today − retention_days."""
    return day < today - timedelta(days=retention_days)


def archive_path(archive_dir: Path, partition: str) -> Path:
    """Where a partition's archive lives."""
    return archive_dir / f"{partition}.csv.gz"


async def maintain(
    history: HistoryStore,
    *,
    today: date,
    retention_days: int,
    archive_dir: Path,
    days_ahead: int,
) -> MaintenanceReport:
    """One maintenance run; returns at once (locked_out) if another run holds the lock."""
    if retention_days < 0:
        raise ValueError(f"retention_days must be 0 or more, got {retention_days}")
    async with history.connection() as apg:
        if not await apg.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK_KEY):
            return MaintenanceReport(locked_out=True)
        try:
            return await _maintain_locked(
                history, apg, today, retention_days, archive_dir, days_ahead
            )
        finally:
            # The connection goes back to the pool: a session lock would outlive this run.
            await apg.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK_KEY)


async def _maintain_locked(
    history: HistoryStore,
    apg: Any,
    today: date,
    retention_days: int,
    archive_dir: Path,
    days_ahead: int,
) -> MaintenanceReport:
    report = MaintenanceReport()
    before = await _partitions(apg)
    await history.ensure_partitions_ahead(today, days_ahead)
    after = await _partitions(apg)
    report.created = sorted(set(after) - set(before))
    expired = [
        (name, state)
        for name, state in after.items()
        if (day := partition_day(name)) is not None and is_expired(day, today, retention_days)
    ]
    if expired:
        await asyncio.to_thread(archive_dir.mkdir, parents=True, exist_ok=True)
    for name, state in sorted(expired):
        try:
            report.archived.append(await _retire(apg, name, state, archive_dir))
        except ArchiveMismatch as exc:
            report.problems.append(str(exc))
            continue
        report.dropped.append(name)
    return report


async def _partitions(apg: Any) -> dict[str, str]:
    """Partition-named tables → "attached", "detaching" or "detached" (a crashed run's leftover)."""
    return {row[0]: row[1] for row in await apg.fetch(_LIST_PARTITIONS)}


async def _retire(apg: Any, name: str, state: str, archive_dir: Path) -> ArchivedPartition:
    """Archives, detaches, verifies and drops one expired partition."""
    path = archive_path(archive_dir, name)
    wrote = False
    if state != "detached":
        # Archive while the day is still attached, so it is never unreadable and unarchived.
        if not await asyncio.to_thread(path.exists):
            await _export(apg, name, path)
            wrote = True
        if state == "detaching":
            await apg.execute(f'ALTER TABLE {PARENT_TABLE} DETACH PARTITION "{name}" FINALIZE')
        else:
            await apg.execute(f'ALTER TABLE {PARENT_TABLE} DETACH PARTITION "{name}" CONCURRENTLY')
    # Detached: nothing can add rows any more, so this count is final.
    rows: int = await apg.fetchval(f'SELECT count(*) FROM "{name}"')
    on_file = await asyncio.to_thread(archived_rows, path)
    if on_file is None or on_file < rows:
        # Missing, unreadable or short (rows arrived after it was written): the table is a
        # superset of it, so a fresh export loses nothing.
        on_file = await _export(apg, name, path)
        wrote = True
    if on_file != rows:
        raise ArchiveMismatch(
            f"{path} holds {on_file} rows but partition {name} holds {rows}; "
            "both were kept, compare them before dropping the partition by hand"
        )
    await apg.execute(f'DROP TABLE "{name}"')
    return ArchivedPartition(name, path, rows, reused=not wrote)


async def _export(apg: Any, table: str, path: Path) -> int:
    """Writes every row of `table` to `path` as gzip CSV with a header; returns the row count.

    The file appears complete or not at all: temp file in the same directory, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    raw = await asyncio.to_thread(open, tmp, "wb")
    try:
        # mtime=0: the same rows give the same bytes, whichever run wrote them.
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
            async with apg.transaction(readonly=True):
                await apg.execute("SET LOCAL TimeZone = 'UTC'")
                status: str = await apg.copy_from_query(
                    _EXPORT.format(table=table), output=packed, format="csv", header=True
                )
        await asyncio.to_thread(_publish, raw, tmp, path)
    except BaseException:
        raw.close()
        tmp.unlink(missing_ok=True)
        raise
    return int(status.rsplit(" ", 1)[1])  # "COPY <n>"


def _publish(raw: IO[bytes], tmp: Path, path: Path) -> None:
    """Makes the temp file durable, then atomically gives it its final name."""
    raw.flush()
    os.fsync(raw.fileno())
    raw.close()
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself must survive a crash too
    finally:
        os.close(directory)


def archived_rows(path: Path) -> int | None:
    """Data rows in an archive, or None when it is missing, unreadable or not one of ours."""
    try:
        with gzip.open(path, "rt", newline="", encoding="utf-8") as text:
            reader = csv.reader(text)
            if tuple(next(reader, ())) != ARCHIVE_COLUMNS:
                return None
            return sum(1 for _ in reader)
    except (OSError, EOFError, csv.Error, UnicodeDecodeError):
        return None


def utc_today() -> date:
    """Today's date in UTC, the calendar partitions are cut on."""
    return datetime.now(UTC).date()


async def run_forever(
    history: HistoryStore, settings: Settings, today: Callable[[], date] = utc_today
) -> None:
    """Runs maintenance (partitions ahead, then retention) now and every
    `maintenance_interval_s`, until cancelled (GeoQueryService runs it)."""

    async def once() -> list[str]:
        report = await maintain(
            history,
            today=today(),
            retention_days=settings.retention_days,
            archive_dir=Path(settings.archive_dir),
            days_ahead=settings.partitions_ahead_days,
        )
        return report.lines()

    await _repeat(once, settings.maintenance_interval_s)


async def keep_partitions_ahead(
    history: HistoryStore, settings: Settings, today: Callable[[], date] = utc_today
) -> None:
    """Creates the coming days' history partitions every `maintenance_interval_s`, until
    cancelled (LocationService runs it, so its persister never meets a missing day)."""

    async def once() -> list[str]:
        await history.ensure_partitions_ahead(today(), settings.partitions_ahead_days)
        return []

    await _repeat(once, settings.maintenance_interval_s)


async def _repeat(once: Callable[[], Awaitable[list[str]]], interval_s: float) -> None:
    """A failed run is logged and retried on the next tick: a database restart or a full disk must
    not take the service down with it."""
    while True:
        try:
            lines = await once()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, SQLAlchemyError) as exc:
            raise_if_cancelling(exc)
            log.exception("history maintenance failed; retrying in %g s", interval_s)
        else:
            for line in lines:
                log.info("history maintenance: %s", line)
        await asyncio.sleep(interval_s)
