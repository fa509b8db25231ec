"""Replay read benchmark: ReplayFleet's history pages (a city box, an hour and a day) over a day of
a fleet's fixes, before and after the BRIN index on recorded_at is summarised."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.stream import percentiles
from services.domain.area import Box
from services.history.box_reads import BoxQuery, box_fix_pages
from services.history.migrate import run_migrations
from services.history.store import PARENT_TABLE, HistoryStore, create_engine
from services.ops.mesh.postgres_server import PostgresServer

# Drivers spread over ~40 x 45 km around Berlin; the replayed box is ~5.5 x 7 km of its centre.
_LOAD = f"""
INSERT INTO {PARENT_TABLE} (driver_id, location, recorded_at, seq, received_at)
SELECT 'd' || d,
       ST_SetSRID(ST_MakePoint(13.1 + ((d * 7919 + s * 13) % 1000) / 1000.0 * 0.6,
                               52.3 + ((d * 104729 + s * 31) % 1000) / 1000.0 * 0.4),
                  4326)::geography,
       $1::timestamptz + make_interval(secs => s * $3::float8 + d % $3::int), s, $1::timestamptz
FROM generate_series(0, (86400 / $3::int) - 1) AS s, generate_series(1, $2::int) AS d
ORDER BY s, d
"""
BOX = Box(52.50, 13.35, 52.55, 13.45)
DAY = datetime(2026, 3, 1, tzinfo=UTC)


async def read(history: HistoryStore, start: datetime, end: datetime) -> dict[str, Any]:
    """Every page of the box over [start, end): rows, pages, seconds, per-page ms."""
    page_ms: list[float] = []
    rows = 0
    began = last = time.perf_counter()
    async for page in box_fix_pages(history, BoxQuery(BOX, start, end), 1_000):
        now = time.perf_counter()
        page_ms.append((now - last) * 1000)
        last = now
        rows += len(page)
    seconds = time.perf_counter() - began
    return {
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        "page_ms": percentiles(page_ms),
    }


async def measure(url: str, dsn: str, drivers: int, interval_s: int) -> dict[str, Any]:
    history = HistoryStore(create_engine(url))
    await history.ensure_partitions([DAY.date()])
    pg = await asyncpg.connect(dsn)
    began = time.perf_counter()
    await pg.execute(_LOAD, DAY, drivers, interval_s)
    await pg.execute(f"ANALYZE {PARENT_TABLE}")
    loaded = time.perf_counter() - began
    total = await pg.fetchval(f"SELECT count(*) FROM {PARENT_TABLE}")
    hour = (DAY + timedelta(hours=10), DAY + timedelta(hours=11))
    result: dict[str, Any] = {"stored_rows": total, "load_s": round(loaded, 1)}
    # Before VACUUM the BRIN ranges written since the index was built are unsummarised, as in
    # the newest part of today's partition between autovacuum runs.
    result["hour_unsummarised"] = await read(history, *hour)
    await pg.execute(f"VACUUM ANALYZE {PARENT_TABLE}")
    result["hour"] = await read(history, *hour)
    result["day"] = await read(history, DAY, DAY + timedelta(days=1))
    await pg.close()
    await history.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drivers", type=int, default=1_000)
    parser.add_argument("--interval", type=int, default=40, help="seconds between a driver's fixes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ridemesh-replay-bench-") as tmp:
        Path(tmp).chmod(0o755)
        with PostgresServer(Path(tmp) / "data", fsync=False) as server:
            run_migrations(server.url)
            result = asyncio.run(measure(server.url, server.dsn, args.drivers, args.interval))
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
