"""Track benchmark: GetDriverTrack through Envoy for driver-days in a table of N stored fixes."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from bench.calls import Job, Timings, run_timed
from bench.procstat import usage_of
from bench.stream import mesh_roots, mesh_token, migrate, percentiles, usage_report
from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from services.auth.tokens import bearer_channel
from services.history.store import PARENT_TABLE, HistoryStore, create_engine
from services.ops.mesh.supervisor import Mesh, MeshSettings, start_mesh

CENTRE = (12.9716, 77.5946)  # Bengaluru
CALL_TIMEOUT_S = 30.0
WARMUP_CALLS = 3
# Days loaded at once: one server backend each, so two use both cores of the target machine.
LOAD_PARALLEL = 2

# One day's fixes in time order (all drivers' k-th fix, then the (k+1)-th), as a fleet's fixes
# arrive: a driver-day's rows are then spread over the heap, not packed together. Each driver
# circles the centre on its own phase, so tracks have a real length. $1 day start, $2 first
# driver, $3 drivers, $4 fixes per driver, $5 seconds between fixes, $6..$7 centre.
_LOAD_DAY = f"""
INSERT INTO {PARENT_TABLE}
    (driver_id, location, heading_deg, speed_mps, accuracy_m, recorded_at, seq, received_at)
SELECT 'track-' || lpad(d::text, 6, '0'),
       ST_SetSRID(ST_MakePoint($7::float8 + 0.05 * cos(k / 700.0 + d),
                               $6::float8 + 0.05 * sin(k / 500.0 + d)), 4326)::geography,
       (k % 360)::real, 8.0, 5.0,
       $1::timestamptz + k * make_interval(secs => $5::float8), k + 1,
       $1::timestamptz + k * make_interval(secs => $5::float8) + interval '0.5 s'
FROM generate_series(0, $4::int - 1) AS k, generate_series($2::int, $2::int + $3::int - 1) AS d
ORDER BY k, d
"""


@dataclass(frozen=True)
class Layout:
    """Where the rows go: `drivers_per_day` new drivers on each of `days` days before today."""

    days: int
    drivers_per_day: int
    fixes_per_day: int
    interval_s: float

    @property
    def rows(self) -> int:
        return self.days * self.drivers_per_day * self.fixes_per_day

    def day(self, n: int) -> date:
        # Days end yesterday: within retention (30 days) and clear of today's live writes.
        return datetime.now(UTC).date() - timedelta(days=self.days - n)

    def driver_days(self) -> list[tuple[str, date]]:
        return [
            (f"track-{n * self.drivers_per_day + j:06d}", self.day(n))
            for n in range(self.days)
            for j in range(self.drivers_per_day)
        ]


def layout_of(args: argparse.Namespace) -> Layout:
    fixes = int(86_400 / args.interval)
    return Layout(args.days, math.ceil(args.rows / (args.days * fixes)), fixes, args.interval)


async def load_day(store: HistoryStore, layout: Layout, n: int) -> None:
    start = datetime.combine(layout.day(n), datetime.min.time(), tzinfo=UTC)
    async with store.connection() as apg, apg.transaction():
        await apg.execute("SET LOCAL work_mem = '256MB'")  # the ORDER BY sorts in memory
        await apg.execute(
            _LOAD_DAY,
            start,
            n * layout.drivers_per_day,
            layout.drivers_per_day,
            layout.fixes_per_day,
            layout.interval_s,
            *CENTRE,
        )


async def load(database_url: str, layout: Layout) -> dict[str, Any]:
    """Creates the partitions, fills them server-side, then VACUUM (ANALYZE); times each step."""
    store = HistoryStore(create_engine(database_url))
    limit = asyncio.Semaphore(LOAD_PARALLEL)

    async def one(n: int) -> None:
        async with limit:
            await load_day(store, layout, n)

    try:
        start = time.perf_counter()
        await store.ensure_partitions(layout.day(n) for n in range(layout.days))
        partitions_s = time.perf_counter() - start
        await asyncio.gather(*(one(n) for n in range(layout.days)))
        insert_s = time.perf_counter() - start - partitions_s
        async with store.connection() as apg:
            # Sets hint bits and the visibility map as autovacuum would have on old days.
            await apg.execute(f"VACUUM (ANALYZE) {PARENT_TABLE}")
            rows = await apg.fetchval(f"SELECT count(*) FROM {PARENT_TABLE}")
            size = await apg.fetchval(
                "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                f"WHERE inhparent = '{PARENT_TABLE}'::regclass"
            )
        total_s = time.perf_counter() - start
    finally:
        await store.dispose()
    return {
        "rows": rows,
        "table_mib": round(size / 2**20),
        "partitions_s": round(partitions_s, 2),
        "insert_s": round(insert_s, 1),
        "insert_rows_per_s": round(rows / insert_s),
        "vacuum_analyze_s": round(total_s - partitions_s - insert_s, 1),
        "load_total_s": round(total_s, 1),
    }


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def track_request(driver_id: str, day: date, page_size: int) -> pb.GetDriverTrackRequest:
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    return pb.GetDriverTrackRequest(
        driver_id=driver_id,
        start_time=_timestamp(start),
        end_time=_timestamp(start + timedelta(days=1)),
        page_size=page_size,
    )


class TrackJobs:
    """Jobs for the three ways of reading a driver-day, and what their replies held."""

    def __init__(
        self, stub: geo_grpc.GeoQueryServiceAsyncStub, history: HistoryStore, max_pages: int
    ) -> None:
        self._stub = stub
        self._history = history
        self._max_pages = max_pages
        self.page_ms: list[float] = []  # each page of the paged reads, timed on its own
        self.points: dict[str, list[int]] = {}

    def first_page(self, driver_id: str, day: date, page_size: int, label: str) -> Job:
        request = track_request(driver_id, day, page_size)

        async def call() -> None:
            reply = await self._stub.GetDriverTrack(request, timeout=CALL_TIMEOUT_S)
            self.points.setdefault(label, []).append(len(reply.points))

        return label, call

    def whole_day(self, driver_id: str, day: date, page_size: int, label: str) -> Job:
        request = track_request(driver_id, day, page_size)

        async def call() -> None:
            points = 0
            for _ in range(self._max_pages):
                start = time.perf_counter()
                reply = await self._stub.GetDriverTrack(request, timeout=CALL_TIMEOUT_S)
                self.page_ms.append((time.perf_counter() - start) * 1000)
                points += len(reply.points)
                if not reply.next_page_token:
                    break
                request.page_token = reply.next_page_token
            self.points.setdefault(label, []).append(points)

        return label, call

    def store_day(self, driver_id: str, day: date, label: str) -> Job:
        """The day's query alone: HistoryStore from this process, no service, no Envoy."""
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        end = start + timedelta(days=1)

        async def call() -> None:
            rows = await self._history.fixes_page(driver_id, start, end, None, 10_001)
            self.points.setdefault(label, []).append(len(rows))

        return label, call


FIRST_PAGE, PAGED, ONE_PAGE = "a_first_page_1000", "b_day_paged_1000", "c_day_one_page_10000"
STORE_ONLY = "store_only_day"


def plan(jobs: TrackJobs, layout: Layout, args: argparse.Namespace) -> tuple[list[Job], list[Job]]:
    """Warm-up jobs, then the measured ones: each on its own random driver-day where possible."""
    wanted = WARMUP_CALLS + 2 * args.calls + args.days_paged + args.store_calls
    pool = layout.driver_days()
    rng = random.Random(args.seed)
    picked = rng.sample(pool, wanted) if wanted <= len(pool) else rng.choices(pool, k=wanted)
    warmup = [jobs.first_page(*picked.pop(), 1_000, "warmup") for _ in range(WARMUP_CALLS)]
    measured = [
        *(jobs.first_page(*picked.pop(), 1_000, FIRST_PAGE) for _ in range(args.calls)),
        *(jobs.whole_day(*picked.pop(), 1_000, PAGED) for _ in range(args.days_paged)),
        *(jobs.first_page(*picked.pop(), 10_000, ONE_PAGE) for _ in range(args.calls)),
        *(jobs.store_day(*picked.pop(), STORE_ONLY) for _ in range(args.store_calls)),
    ]
    rng.shuffle(measured)  # modes interleaved, so drift on a shared machine hits all alike
    return warmup, measured


async def run_tracks(
    address: str, token: str, database_url: str, layout: Layout, args: argparse.Namespace
) -> tuple[Timings, TrackJobs]:
    history = HistoryStore(create_engine(database_url))
    try:
        async with bearer_channel(address, token) as channel:
            stub: geo_grpc.GeoQueryServiceAsyncStub = geo_grpc.GeoQueryServiceStub(channel)
            jobs = TrackJobs(stub, history, max_pages=layout.fixes_per_day // 1_000 + 2)
            warmup, measured = plan(jobs, layout, args)
            await run_timed(warmup, 1, args.max_seconds)
            timings = await run_timed(measured, args.concurrency, args.max_seconds)
    finally:
        await history.dispose()
    return timings, jobs


def report(
    args: argparse.Namespace,
    loaded: dict[str, Any],
    timings: Timings,
    jobs: TrackJobs,
    usage: dict[str, Any],
) -> dict[str, Any]:
    return {
        "bench": "track",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "days": args.days,
        "interval_s": args.interval,
        "concurrency": args.concurrency,
        **loaded,
        "skipped": timings.skipped,
        "errors": dict(timings.errors),
        "modes": {
            label: {
                "ms": percentiles(values),
                "mean_points": round(sum(jobs.points[label]) / len(jobs.points[label])),
            }
            for label, values in sorted(timings.ms.items())
        },
        "b_page_ms": percentiles(jobs.page_ms),
        "processes": usage,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add = parser.add_argument
    add("--rows", type=int, default=10_000_000, help="stored fixes, about (default 10000000)")
    add("--days", type=int, default=25, help="daily partitions, ending yesterday (default 25)")
    add("--interval", type=float, default=12.0, help="seconds between a driver's fixes (12)")
    add("--calls", type=int, default=100, help="calls each for (a) and (c) (default 100)")
    add("--days-paged", type=int, default=30, help="driver-days read page by page (default 30)")
    add("--store-calls", type=int, default=50, help="days read by HistoryStore here (default 50)")
    add("--concurrency", type=int, default=1, help="calls in flight (default 1)")
    add("--max-seconds", type=float, default=120.0, help="stop starting calls after (default 120)")
    add("--seed", type=int, default=1, help="random seed (default 1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    layout = layout_of(args)
    with (
        tempfile.TemporaryDirectory(prefix="ridemesh-bench-track-") as tmp,
        start_mesh(MeshSettings(run_dir=Path(tmp)), before_services=migrate) as mesh,
    ):
        result = run(mesh, layout, args)
    print(json.dumps(result))


def run(mesh: Mesh, layout: Layout, args: argparse.Namespace) -> dict[str, Any]:
    assert mesh.envoy is not None
    assert mesh.database_url is not None
    loaded = asyncio.run(load(mesh.database_url, layout))
    loaded["drivers"] = layout.days * layout.drivers_per_day
    loaded["fixes_per_driver_day"] = layout.fixes_per_day
    roots = mesh_roots(mesh)
    before = usage_of(roots)
    address, token = mesh.envoy.address, mesh_token(mesh)
    timings, jobs = asyncio.run(run_tracks(address, token, mesh.database_url, layout, args))
    return report(args, loaded, timings, jobs, usage_report(before, usage_of(roots)))


if __name__ == "__main__":
    main()
