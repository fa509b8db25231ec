"""Ingest benchmark: HistoryStore.insert_fixes rows/s into a throwaway PostgreSQL + PostGIS."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from services.history.migrate import run_migrations
from services.history.store import FixRow, HistoryStore, create_engine
from services.ops.mesh.postgres_server import PostgresServer

# Two UTC days, so every run writes into two daily partitions.
DAY_ONE = datetime(2024, 3, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Phase:
    """One timed pass over all batches."""

    rows: int
    new_rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def make_rows(total: int, drivers: int) -> list[FixRow]:
    """`total` fixes over `drivers` drivers, first half on day one, second half on day two."""
    received = datetime.now(UTC)
    half = total // 2
    rows = []
    for index in range(total):
        day = 0 if index < half else 1
        step = index - day * half
        driver, nth = step % drivers, step // drivers
        rows.append(
            FixRow(
                driver_id=f"bench-{driver:04d}",
                latitude=12.9 + driver * 1e-4,
                longitude=77.5 + (nth % 1000) * 1e-5,
                heading_deg=90.0,
                speed_mps=8.0,
                accuracy_m=5.0,
                # One fix every 4 s per driver; wraps within the day so it stays in its partition.
                recorded_at=DAY_ONE + timedelta(days=day, seconds=(4 * nth) % 86_400),
                seq=day * 10_000_000 + nth + 1,
                received_at=received,
            )
        )
    return rows


async def timed_pass(store: HistoryStore, rows: Sequence[FixRow], batch: int) -> Phase:
    """Insert `rows` in order, `batch` at a time, one batch after another (like one persister)."""
    new = 0
    start = time.perf_counter()
    for offset in range(0, len(rows), batch):
        new += await store.insert_fixes(rows[offset : offset + batch])
    return Phase(len(rows), new, time.perf_counter() - start)


async def measure(url: str, rows: Sequence[FixRow], batch: int) -> tuple[dict[str, Phase], int]:
    """The two timed passes, and the bytes the stored rows take on disk (table and indexes)."""
    engine = create_engine(url)
    store = HistoryStore(engine)
    try:
        # Partitions are created before timing: that DDL is a once-a-day cost, not ingest.
        await store.ensure_partitions({row.recorded_at.date() for row in rows})
        fresh = await timed_pass(store, rows, batch)
        duplicates = await timed_pass(store, rows, batch)
        async with engine.connect() as conn:
            size = await conn.scalar(
                text(
                    "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                    "WHERE inhparent = 'driver_locations'::regclass"
                )
            )
    finally:
        await store.dispose()
    return {"fresh": fresh, "duplicates": duplicates}, int(size or 0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="rows in total (default 200000)")
    parser.add_argument("--batch", type=int, default=5_000, help="rows per insert (default 5000)")
    parser.add_argument("--drivers", type=int, default=50, help="distinct drivers (default 50)")
    parser.add_argument(
        "--no-fsync", action="store_true", help="run PostgreSQL with fsync=off (default: on)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    rows = make_rows(args.rows, args.drivers)
    fsync = not args.no_fsync
    with (
        tempfile.TemporaryDirectory(prefix="ridemesh-bench-ingest-") as tmp,
        PostgresServer(Path(tmp) / "pg", fsync=fsync, log_path=Path(tmp) / "pg.log") as pg,
    ):
        run_migrations(pg.url)
        phases, stored_bytes = asyncio.run(measure(pg.url, rows, args.batch))
    result = {
        "bench": "ingest",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "fsync": fsync,
        "rows": args.rows,
        "batch": args.batch,
        "drivers": args.drivers,
        "days": 2,
        # What a stored fix costs on disk, its indexes included (sizes the daily partitions).
        "bytes_per_row": round(stored_bytes / args.rows, 1),
        **{
            name: {**asdict(phase), "rows_per_s": round(phase.rows_per_s)}
            for name, phase in phases.items()
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
