"""Trips benchmark: ListDriverTrips (every page) and GetTripSummary over a driver-month of fixes.

Loads one driver's month (a fix every 4 s while working: drives of 1-12 km between stops of
3-20 minutes, short waits inside drives, a dozen rides a day) into a throwaway mesh's PostGIS,
then times the two RPCs through Envoy, and the store plus detector alone in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import math
import platform
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from bench.procstat import usage_of
from bench.stream import mesh_roots, mesh_token, migrate
from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from services.auth.tokens import bearer_channel
from services.domain.trips import TripSettings
from services.geo.trips import get_trip_summary
from services.history.store import PARENT_TABLE, FixRow, HistoryStore, create_engine
from services.ops.mesh.supervisor import Mesh, MeshSettings, start_mesh

DRIVER = "bench-month"
CENTRE = (12.9716, 77.5946)  # Bengaluru
STEP_S = 4.0
CALL_TIMEOUT_S = 300.0
M_PER_DEG = 111_195.0
INSERT_CHUNK = 50_000

_RIDE = """
INSERT INTO rides (ride_id, rider_id, driver_id, state, pickup, dropoff, request_id, create_time)
VALUES ($1, 'bench-rider', $2, 'RIDE_STATE_COMPLETED', ST_MakePoint(77.59, 12.97)::geography,
        ST_MakePoint(77.6, 12.98)::geography, $1, $3)
"""
_EVENT = """
INSERT INTO ride_events (ride_id, from_state, to_state, party, event_time)
VALUES ($1, NULL, $2, 'PARTY_DRIVER', $3)
"""


class Month:
    """Generates the month's fixes day by day (a driver moving about the centre)."""

    def __init__(self, first_day: datetime, days: int, hours: float, seed: int) -> None:
        self.first_day, self.days, self.hours = first_day, days, hours
        self.rng = random.Random(seed)
        self.seq = 0
        self.lat, self.lng = CENTRE

    def rows(self) -> Iterator[FixRow]:
        last = self.first_day
        for day in range(self.days):
            # A day starts at 07:00, or when the last one's final drive ended (24-hour days).
            start = max(self.first_day + timedelta(days=day, hours=7), last)
            for row in self._day(start, start + timedelta(hours=self.hours)):
                last = row.recorded_at
                yield row

    def _fix(self, t: datetime, speed: float, jitter_m: float) -> FixRow:
        self.seq += 1
        d_lat = self.rng.gauss(0, jitter_m / 2) / M_PER_DEG
        d_lng = self.rng.gauss(0, jitter_m / 2) / (M_PER_DEG * math.cos(math.radians(self.lat)))
        lat, lng = self.lat + d_lat, self.lng + d_lng
        return FixRow(DRIVER, lat, lng, 0.0, speed, 5.0, t, self.seq, t)

    def _day(self, t: datetime, end: datetime) -> Iterator[FixRow]:
        rng, step = self.rng, timedelta(seconds=STEP_S)
        while t < end:
            for _ in range(int(rng.uniform(180, 1_200) / STEP_S)):  # a stop
                t += step
                yield self._fix(t, 0.0, 3.0)
            metres, speed = rng.uniform(1_000, 12_000), rng.uniform(6, 15)
            bearing = rng.uniform(0, 2 * math.pi)
            if math.hypot(self.lat - CENTRE[0], self.lng - CENTRE[1]) > 0.12:
                bearing = math.atan2(CENTRE[1] - self.lng, CENTRE[0] - self.lat)  # head back
            for leg in range(int(metres / (speed * STEP_S))):
                t += step
                still = leg % 60 == 59  # a 40 s wait at a light now and then
                if not still:
                    self.lat += speed * STEP_S * math.cos(bearing) / M_PER_DEG
                    self.lng += (
                        speed
                        * STEP_S
                        * math.sin(bearing)
                        / (M_PER_DEG * math.cos(math.radians(self.lat)))
                    )
                yield self._fix(t, 0.0 if still else speed, 3.0)


async def load(database_url: str, month: Month, rides_per_day: int) -> dict[str, Any]:
    store = HistoryStore(create_engine(database_url))
    start = time.perf_counter()
    try:
        rows, chunk = 0, []
        for row in month.rows():
            chunk.append(row)
            if len(chunk) == INSERT_CHUNK:
                rows += await store.insert_fixes(chunk)
                chunk = []
        rows += await store.insert_fixes(chunk)
        async with store.connection() as apg:
            await add_rides(apg, month, rides_per_day)
            await apg.execute(f"VACUUM (ANALYZE) {PARENT_TABLE}")
    finally:
        await store.dispose()
    return {"rows": rows, "load_s": round(time.perf_counter() - start, 1)}


async def add_rides(apg: Any, month: Month, per_day: int) -> None:
    rng = random.Random(7)
    for day in range(month.days):
        for n in range(per_day):
            assigned = month.first_day + timedelta(
                days=day, hours=7, seconds=rng.uniform(0, month.hours * 3_600)
            )
            ride_id = f"bench-ride-{day}-{n}"
            await apg.execute(_RIDE, ride_id, DRIVER, assigned - timedelta(seconds=20))
            for state, after_s in (
                ("RIDE_STATE_DRIVER_ASSIGNED", 0),
                ("RIDE_STATE_IN_PROGRESS", rng.uniform(120, 600)),
                ("RIDE_STATE_COMPLETED", rng.uniform(900, 2_400)),
            ):
                await apg.execute(_EVENT, ride_id, state, assigned + timedelta(seconds=after_s))


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def timed(
    runs: int, call: Callable[[], Awaitable[dict[str, Any]]], roots: list[tuple[str, int]]
) -> dict[str, Any]:
    """Runs `call` once to warm up, then `runs` times: wall seconds per run, CPU seconds per run
    of each mesh process and of this one (less disturbed than wall time on a shared machine),
    and what the call returned."""
    await call()
    seconds, last = [], {}
    before, own_before = usage_of(roots), time.process_time()
    for _ in range(runs):
        start = time.perf_counter()
        last = await call()
        seconds.append(time.perf_counter() - start)
    after, own_s = usage_of(roots), time.process_time() - own_before
    cpu = {name: (after[name].cpu_s - before[name].cpu_s) / runs for name in after}
    cpu["bench"] = own_s / runs
    return {
        "seconds": [round(s, 3) for s in seconds],
        "median_s": round(statistics.median(seconds), 3),
        "cpu_s_per_run": {name: round(v, 3) for name, v in cpu.items() if v >= 0.005},
        "peak_rss_mib": {name: round(after[name].hwm_kib / 1024, 1) for name in after},
        **last,
    }


async def measure(
    mesh: Mesh, first_day: datetime, days: int, args: argparse.Namespace
) -> dict[str, Any]:
    assert mesh.envoy is not None
    assert mesh.database_url is not None
    start, end = _timestamp(first_day), _timestamp(first_day + timedelta(days=days))
    summary_request = pb.GetTripSummaryRequest(driver_id=DRIVER, start_time=start, end_time=end)
    history = HistoryStore(create_engine(mesh.database_url))
    roots = mesh_roots(mesh)
    results: dict[str, Any] = {}
    try:
        async with bearer_channel(mesh.envoy.address, mesh_token(mesh)) as channel:
            stub: geo_grpc.GeoQueryServiceAsyncStub = geo_grpc.GeoQueryServiceStub(channel)

            async def summary() -> dict[str, Any]:
                reply = await stub.GetTripSummary(summary_request, timeout=CALL_TIMEOUT_S)
                return {
                    "fixes": reply.fix_count,
                    "trips": reply.trip_count,
                    "stops": reply.stop_count,
                }

            def all_pages(page_size: int) -> Callable[[], Awaitable[dict[str, Any]]]:
                async def call() -> dict[str, Any]:
                    request = pb.ListDriverTripsRequest(
                        driver_id=DRIVER, start_time=start, end_time=end, page_size=page_size
                    )
                    trips = pages = 0
                    while True:
                        reply = await stub.ListDriverTrips(request, timeout=CALL_TIMEOUT_S)
                        pages, trips = pages + 1, trips + len(reply.trips)
                        if not reply.next_page_token:
                            return {"pages": pages, "trips": trips}
                        request.page_token = reply.next_page_token

                return call

            async def in_process() -> dict[str, Any]:
                reply = await get_trip_summary(history, summary_request, TripSettings())
                return {"fixes": reply.fix_count}

            results["summary_envoy"] = await timed(args.runs, summary, roots)
            results["list_all_pages_100_envoy"] = await timed(args.runs, all_pages(100), roots)
            results["list_all_pages_1000_envoy"] = await timed(args.runs, all_pages(1_000), roots)
            results["summary_in_process"] = await timed(args.runs, in_process, roots)
            if args.profile:
                await profile(in_process)
    finally:
        await history.dispose()
    fixes = results["summary_envoy"]["fixes"]
    for mode in results.values():
        mode["rows_per_s"] = round(fixes / mode["median_s"])
    return results


async def profile(call: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Where one in-process summary spends its time, to stderr."""
    profiler = cProfile.Profile()
    profiler.enable()
    await call()
    profiler.disable()
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(14)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add = parser.add_argument
    add("--days", type=int, default=30, help="days in the month, ending today (default 30)")
    add("--hours", type=float, default=12.0, help="working hours a day (default 12)")
    add("--rides-per-day", type=int, default=12, help="rides a day (default 12)")
    add("--runs", type=int, default=5, help="timed runs of each call (default 5)")
    add("--seed", type=int, default=1, help="random seed (default 1)")
    add("--profile", action="store_true", help="profile one in-process summary (stderr)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # The month ends today, inside history's retention, so partition upkeep keeps all of it.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first_day = today - timedelta(days=args.days - 1)
    with (
        tempfile.TemporaryDirectory(prefix="ridemesh-bench-trips-") as tmp,
        start_mesh(MeshSettings(run_dir=Path(tmp)), before_services=migrate) as mesh,
    ):
        assert mesh.database_url is not None
        month = Month(first_day, args.days, args.hours, args.seed)
        loaded = asyncio.run(load(mesh.database_url, month, args.rides_per_day))
        modes = asyncio.run(measure(mesh, first_day, args.days, args))
    result = {
        "bench": "trips",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "days": args.days,
        "hours_a_day": args.hours,
        "rides_per_day": args.rides_per_day,
        **loaded,
        "modes": modes,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
