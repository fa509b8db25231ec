"""History maintenance against real PostgreSQL: partitions ahead, archive, drop, lock, recovery."""

from __future__ import annotations

import asyncio
import csv
import gzip
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from services.history.maintenance import (
    ARCHIVE_COLUMNS,
    MAINTENANCE_LOCK_KEY,
    MaintenanceReport,
    archive_path,
    maintain,
    run_forever,
    utc_today,
)
from services.history.store import FixRow, HistoryStore, create_engine, partition_name
from services.server.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

TODAY = date(2026, 12, 10)
RETENTION = 2  # keeps 8, 9 and 10 December; 5, 6 and 7 December expire
AHEAD = 3
EXPIRED = [TODAY - timedelta(days=n) for n in (5, 4, 3)]
KEPT = [TODAY - timedelta(days=n) for n in (2, 1, 0)]


@dataclass
class Db:
    url: str
    store: HistoryStore
    pg: Any


@pytest.fixture
async def db(make_database: Callable[[], str]) -> AsyncIterator[Db]:
    """A fresh database per test: maintenance changes the partition set."""
    url = await asyncio.to_thread(make_database)
    store = HistoryStore(create_engine(url))
    pg = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    yield Db(url, store, pg)
    await pg.close()
    await store.dispose()


def _rows(day: date, driver_id: str, count: int) -> list[FixRow]:
    start = datetime.combine(day, time(0, 0, 3), tzinfo=UTC)
    return [
        FixRow(
            driver_id,
            -33.8688 + i * 1e-5,
            151.2093 - i * 1.234567e-7,
            float(i % 360),
            i / 3,
            4.5,
            start + timedelta(seconds=37 * i, microseconds=i),
            i + 1,
            start + timedelta(seconds=37 * i + 1),
        )
        for i in range(count)
    ]


async def _populate(store: HistoryStore) -> dict[date, list[FixRow]]:
    """Rows in every day from today − 5 to today, a different number per day and driver."""
    by_day: dict[date, list[FixRow]] = {}
    for n, day in enumerate([*EXPIRED, *KEPT]):
        rows = _rows(day, "drv-a", 10 + n) + _rows(day, "drv-b", 3 * n + 1)
        await store.insert_fixes(rows)
        by_day[day] = rows
    return by_day


async def _run(store: HistoryStore, archive_dir: Path, today: date = TODAY) -> MaintenanceReport:
    return await maintain(
        store, today=today, retention_days=RETENTION, archive_dir=archive_dir, days_ahead=AHEAD
    )


def _read_archive(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with gzip.open(path, "rt", newline="", encoding="utf-8") as text:
        reader = csv.DictReader(text)
        return list(reader.fieldnames or []), list(reader)


def _as_fix(record: dict[str, str]) -> FixRow:
    return FixRow(
        record["driver_id"],
        float(record["latitude"]),
        float(record["longitude"]),
        float(record["heading_deg"]),
        float(record["speed_mps"]),
        float(record["accuracy_m"]),
        datetime.fromisoformat(record["recorded_at"]),
        int(record["seq"]),
        datetime.fromisoformat(record["received_at"]),
    )


def _same(a: FixRow, b: FixRow) -> bool:
    # heading, speed and accuracy are stored as real (float4): compare at that precision.
    return (a.driver_id, a.latitude, a.longitude, a.recorded_at, a.seq, a.received_at) == (
        b.driver_id,
        b.latitude,
        b.longitude,
        b.recorded_at,
        b.seq,
        b.received_at,
    ) and all(
        x == pytest.approx(y, rel=1e-6)
        for x, y in ((a.heading_deg, b.heading_deg), (a.speed_mps, b.speed_mps))
    )


def _mtimes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


async def _tables(pg: Any) -> set[str]:
    rows = await pg.fetch(
        "SELECT relname FROM pg_class WHERE relname ~ '^driver_locations_p[0-9]{8}$'"
    )
    return {row["relname"] for row in rows}


async def _count(pg: Any, day: date) -> int:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    count: int = await pg.fetchval(
        "SELECT count(*) FROM driver_locations WHERE recorded_at >= $1 AND recorded_at < $2",
        start,
        start + timedelta(days=1),
    )
    return count


async def test_expired_days_are_archived_then_dropped(db: Db, tmp_path: Path) -> None:
    by_day = await _populate(db.store)
    archive_dir = tmp_path / "archive" / "nested"
    report = await _run(db.store, archive_dir)

    expired_names = [partition_name(day) for day in EXPIRED]
    assert [a.partition for a in report.archived] == expired_names
    assert report.dropped == expired_names
    assert report.problems == []
    assert report.locked_out is False
    for item, day in zip(report.archived, EXPIRED, strict=True):
        assert item.path == archive_path(archive_dir, partition_name(day))
        assert item.rows == len(by_day[day])
        assert item.reused is False
        header, records = _read_archive(item.path)
        assert header == list(ARCHIVE_COLUMNS)
        restored = sorted((_as_fix(r) for r in records), key=lambda f: (f.driver_id, f.seq))
        expected = sorted(by_day[day], key=lambda f: (f.driver_id, f.seq))
        assert len(restored) == len(expected)
        assert all(_same(a, b) for a, b in zip(restored, expected, strict=True))
    assert sorted(p.name for p in archive_dir.iterdir()) == [f"{n}.csv.gz" for n in expired_names]

    tables = await _tables(db.pg)
    assert not tables & set(expired_names)
    for day in KEPT:
        assert await _count(db.pg, day) == len(by_day[day])
    ahead = {partition_name(TODAY + timedelta(days=n)) for n in range(AHEAD + 1)}
    assert ahead <= tables
    assert set(report.created) == {partition_name(TODAY + timedelta(days=n)) for n in (1, 2, 3)}


async def test_running_again_is_a_no_op(db: Db, tmp_path: Path) -> None:
    await _populate(db.store)
    await _run(db.store, tmp_path)
    files = _mtimes(tmp_path)
    tables = await _tables(db.pg)
    again = await _run(db.store, tmp_path)
    assert again.lines() == ["nothing to do"]
    assert _mtimes(tmp_path) == files
    assert await _tables(db.pg) == tables


async def test_two_runs_at_once_do_the_work_once(db: Db, tmp_path: Path) -> None:
    await _populate(db.store)
    other = HistoryStore(create_engine(db.url))
    try:
        first, second = await asyncio.gather(_run(db.store, tmp_path), _run(other, tmp_path))
    finally:
        await other.dispose()
    workers = [r for r in (first, second) if r.archived]
    assert len(workers) == 1
    idle = first if workers[0] is second else second
    # The other run either met the lock or came after the work and found nothing to do.
    assert idle.locked_out or idle.lines() == ["nothing to do"]
    assert workers[0].dropped == [partition_name(day) for day in EXPIRED]
    assert not await _tables(db.pg) & set(workers[0].dropped)


async def test_a_held_lock_means_nothing_is_done(db: Db, tmp_path: Path) -> None:
    await _populate(db.store)
    tables = await _tables(db.pg)
    assert await db.pg.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK_KEY)
    try:
        report = await _run(db.store, tmp_path)
    finally:
        await db.pg.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK_KEY)
    assert report.locked_out
    assert report.lines() == ["another maintenance run holds the lock; nothing done"]
    assert await _tables(db.pg) == tables
    assert _mtimes(tmp_path) == {}
    # The lock went back with its connection: the next run does the work.
    assert (await _run(db.store, tmp_path)).dropped


async def test_archive_left_by_a_crashed_run_is_verified_not_rewritten(
    db: Db, tmp_path: Path
) -> None:
    by_day = await _populate(db.store)
    await _run(db.store, tmp_path)
    path = archive_path(tmp_path, partition_name(EXPIRED[0]))
    before = path.stat()
    # As if the run had crashed after writing the archive and before dropping the partition.
    fresh = HistoryStore(create_engine(db.url))
    try:
        await fresh.insert_fixes(by_day[EXPIRED[0]])
        report = await _run(fresh, tmp_path)
    finally:
        await fresh.dispose()
    assert [(a.partition, a.rows, a.reused) for a in report.archived] == [
        (partition_name(EXPIRED[0]), len(by_day[EXPIRED[0]]), True)
    ]
    assert report.dropped == [partition_name(EXPIRED[0])]
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_short_or_broken_archive_is_rewritten_with_every_row(db: Db, tmp_path: Path) -> None:
    by_day = await _populate(db.store)
    day = EXPIRED[1]
    short = archive_path(tmp_path, partition_name(day))
    with gzip.open(short, "wt", encoding="utf-8") as out:
        out.write(",".join(ARCHIVE_COLUMNS) + "\n")  # a header and no rows
    broken = archive_path(tmp_path, partition_name(EXPIRED[2]))
    broken.write_bytes(b"\x1f\x8b not really gzip")
    report = await _run(db.store, tmp_path)
    assert report.problems == []
    assert report.dropped == [partition_name(d) for d in EXPIRED]
    for d, path in ((day, short), (EXPIRED[2], broken)):
        assert len(_read_archive(path)[1]) == len(by_day[d])
    assert {a.partition: a.reused for a in report.archived}[partition_name(day)] is False


async def test_archive_with_more_rows_than_the_partition_keeps_both(db: Db, tmp_path: Path) -> None:
    by_day = await _populate(db.store)
    await _run(db.store, tmp_path)
    day = EXPIRED[0]
    path = archive_path(tmp_path, partition_name(day))
    content = path.read_bytes()
    fresh = HistoryStore(create_engine(db.url))
    try:
        await fresh.insert_fixes(by_day[day][:3])  # fewer rows than the archive holds
        report = await _run(fresh, tmp_path)
    finally:
        await fresh.dispose()
    assert report.dropped == []
    assert len(report.problems) == 1
    assert (
        f"holds {len(by_day[day])} rows but partition {partition_name(day)} holds 3"
        in (report.problems[0])
    )
    assert path.read_bytes() == content
    assert partition_name(day) in await _tables(db.pg)


async def test_partition_detached_by_a_crashed_run_is_archived_and_dropped(
    db: Db, tmp_path: Path
) -> None:
    by_day = await _populate(db.store)
    name = partition_name(EXPIRED[2])
    await db.pg.execute(f"ALTER TABLE driver_locations DETACH PARTITION {name}")
    report = await _run(db.store, tmp_path)
    assert name in report.dropped
    assert len(_read_archive(archive_path(tmp_path, name))[1]) == len(by_day[EXPIRED[2]])
    assert name not in await _tables(db.pg)


async def test_nulls_survive_the_archive(db: Db, tmp_path: Path) -> None:
    day = EXPIRED[0]
    await db.store.ensure_partitions([day])
    await db.pg.execute(
        "INSERT INTO driver_locations (driver_id, location, recorded_at, seq, received_at) "
        "VALUES ('n', ST_GeogFromText('POINT(-179.999 89.5)'), $1, 1, $1)",
        datetime.combine(day, time(12), tzinfo=UTC),
    )
    await _run(db.store, tmp_path)
    _, records = _read_archive(archive_path(tmp_path, partition_name(day)))
    assert records == [
        {
            "driver_id": "n",
            "latitude": "89.5",
            "longitude": "-179.999",
            "heading_deg": "",
            "speed_mps": "",
            "accuracy_m": "",
            "recorded_at": f"{day.isoformat()} 12:00:00+00",
            "seq": "1",
            "received_at": f"{day.isoformat()} 12:00:00+00",
        }
    ]


async def test_run_forever_survives_a_failed_run(
    db: Db, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _populate(db.store)
    blocker = tmp_path / "archive"
    blocker.write_text("a file where the directory should be")
    settings = Settings(
        redis_url="-",
        database_url=db.url,
        retention_days=RETENTION,
        archive_dir=str(blocker),
        maintenance_interval_s=0.05,
        partitions_ahead_days=AHEAD,
    )
    caplog.set_level(logging.INFO, logger="services.history.maintenance")
    task = asyncio.create_task(run_forever(db.store, settings, today=lambda: TODAY))
    try:
        await _logged(caplog, "history maintenance failed")
        await asyncio.to_thread(blocker.unlink)
        await _logged(caplog, f"dropped partition {partition_name(EXPIRED[0])}")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (blocker / f"{partition_name(EXPIRED[0])}.csv.gz").exists()
    assert partition_name(EXPIRED[0]) not in await _tables(db.pg)


async def _logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if text in caplog.text:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{text!r} was not logged within {timeout} s:\n{caplog.text}")


async def test_cli_maintain_prints_what_it_did(db: Db, tmp_path: Path) -> None:
    today = utc_today()
    old = today - timedelta(days=5)
    rows = _rows(old, "cli", 7)
    await db.store.insert_fixes(rows)
    await db.store.insert_fixes(_rows(today, "cli", 2))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.ops.cli",
        "maintain",
        "--database-url",
        db.url,
        "--retention-days",
        "2",
        "--archive-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RIDEMESH_DATABASE_URL": ""},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    name = partition_name(old)
    path = tmp_path / f"{name}.csv.gz"
    assert f"archived {name}: 7 rows in {path}" in out.decode()
    assert f"dropped partition {name}" in out.decode()
    assert len(_read_archive(path)[1]) == 7
    assert await _count(db.pg, today) == 2
