"""Nearby benchmark: SearchNearbyDrivers through Envoy, N live drivers in a city; latency, CPU."""

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.calls import Job, Timings, run_timed
from bench.procstat import usage_of
from bench.stream import mesh_roots, mesh_token, migrate, percentiles, usage_report
from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1.common_pb2 import DriverAvailability, DriverLocation, LatLng
from services.auth.tokens import bearer_channel
from services.live.client import redis_client
from services.live.ingest import IngestLog, StreamId
from services.live.names import driver_key
from services.live.store import LiveStore
from services.ops.mesh.supervisor import Mesh, MeshSettings, start_mesh

CENTRE = (12.9716, 77.5946)  # Bengaluru
METRES_PER_DEGREE = 111_320.0
# Fixes written at once; the client's pool (64 connections) bounds what is really in flight.
INGEST_CHUNK = 512
CALL_TIMEOUT_S = 10.0
WARMUP_CALLS = 20


@dataclass(frozen=True)
class Mix:
    """One kind of search: radius and result limit."""

    radius_m: float
    max_results: int

    @property
    def name(self) -> str:
        return f"{self.radius_m / 1000:g}km/{self.max_results}"


def parse_mix(text: str) -> Mix:
    radius, limit = text.split(":")
    return Mix(float(radius), int(limit))


def scatter(rng: random.Random, radius_m: float) -> tuple[float, float]:
    """A point spread evenly by area within `radius_m` of CENTRE (flat-earth: fine at 30 km)."""
    distance, bearing = radius_m * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    north, east = distance * math.cos(bearing), distance * math.sin(bearing)
    lat = CENTRE[0] + north / METRES_PER_DEGREE
    return lat, CENTRE[1] + east / (METRES_PER_DEGREE * math.cos(math.radians(CENTRE[0])))


def fix(driver_id: str, lat: float, lng: float, now: float) -> DriverLocation:
    """An accepted fix as LocationService builds it (services/location/servicer.py `_location`)."""
    location = DriverLocation(
        driver_id=driver_id,
        position=LatLng(latitude=lat, longitude=lng),
        heading_deg=90.0,
        speed_mps=8.0,
        accuracy_m=5.0,
        seq=1,
        availability=DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE,
    )
    location.recorded_at.FromNanoseconds(int(now * 1e9))
    location.received_at.FromNanoseconds(int(now * 1e9))
    return location


async def load_drivers(live: LiveStore, args: argparse.Namespace) -> tuple[float, StreamId]:
    """Writes one live fix per driver and marks every n-th busy; returns seconds and last entry."""
    rng = random.Random(args.seed)
    start = time.perf_counter()
    last: StreamId = (0, 0)
    for offset in range(0, args.drivers, INGEST_CHUNK):
        now = time.time()
        chunk = [
            fix(f"nearby-{i:06d}", *scatter(rng, args.city_radius_m), now)
            for i in range(offset, min(args.drivers, offset + INGEST_CHUNK))
        ]
        ids = await asyncio.gather(*(live.ingest(f, f.SerializeToString()) for f in chunk))
        last = max(last, *ids)
    if args.busy_every:
        pipe = live.redis.pipeline(transaction=False)
        busy = int(DriverAvailability.DRIVER_AVAILABILITY_BUSY)
        for i in range(0, args.drivers, args.busy_every):
            pipe.hset(driver_key(f"nearby-{i:06d}"), "a", busy)  # what RideService will do
        await pipe.execute()
    return time.perf_counter() - start, last


async def wait_persisted(live: LiveStore, last: StreamId, timeout_s: float) -> float | None:
    """Seconds until the persister committed every fix up to `last` (None: not within timeout)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        below = await IngestLog(live.redis).committed_below()
        if below is not None and below > last:
            return time.perf_counter() - start
        await asyncio.sleep(0.2)
    return None


def search_jobs(
    stub: geo_grpc.GeoQueryServiceAsyncStub,
    args: argparse.Namespace,
    found: dict[str, list[int]],
    count: int,
) -> list[Job]:
    """`count` searches, mixes interleaved, each from a random centre in the city."""
    rng = random.Random(args.seed + 1)

    def job(mix: Mix) -> Job:
        lat, lng = scatter(rng, args.city_radius_m)
        request = pb.SearchNearbyDriversRequest(
            center=LatLng(latitude=lat, longitude=lng),
            radius_m=mix.radius_m,
            max_results=mix.max_results,
            available_only=not args.all_drivers,
        )

        async def call() -> None:
            reply = await stub.SearchNearbyDrivers(request, timeout=CALL_TIMEOUT_S)
            found.setdefault(mix.name, []).append(len(reply.drivers))

        return mix.name, call

    return [job(args.mixes[n % len(args.mixes)]) for n in range(count)]


async def run_searches(
    address: str, token: str, args: argparse.Namespace
) -> tuple[Timings, dict[str, list[int]]]:
    found: dict[str, list[int]] = {}
    async with bearer_channel(address, token) as channel:
        stub: geo_grpc.GeoQueryServiceAsyncStub = geo_grpc.GeoQueryServiceStub(channel)
        # Opens the connection through Envoy and warms both ends; not counted.
        await run_timed(search_jobs(stub, args, {}, WARMUP_CALLS), 1, args.max_seconds)
        jobs = search_jobs(stub, args, found, args.calls)
        timings = await run_timed(jobs, args.concurrency, args.max_seconds)
    return timings, found


async def prepare(redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    live = LiveStore(redis_client(redis_url), live_window_s=args.live_window)
    loaded_at = time.time()
    try:
        load_s, last = await load_drivers(live, args)
        settle_s = await wait_persisted(live, last, args.settle_timeout)
        drivers_in_index = await live.indexed_drivers()
    finally:
        await live.redis.aclose()
    return {
        "load_s": round(load_s, 2),
        "load_fixes_per_s": round(args.drivers / load_s),
        "persisted_after_s": None if settle_s is None else round(settle_s, 2),
        "drivers_in_index": drivers_in_index,
        "loaded_at": loaded_at,
    }


def report(
    args: argparse.Namespace,
    loaded: dict[str, Any],
    timings: Timings,
    found: dict[str, list[int]],
    usage: dict[str, Any],
) -> dict[str, Any]:
    calls = len(timings.all_ms)
    per_call = {
        name: round(part["cpu_s"] * 1000 / calls, 3) if calls else None
        for name, part in usage.items()
    }
    return {
        "bench": "nearby",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "drivers": args.drivers,
        "city_radius_m": args.city_radius_m,
        "busy_every": args.busy_every,
        "available_only": not args.all_drivers,
        "concurrency": args.concurrency,
        **loaded,
        "calls": calls,
        "skipped": timings.skipped,
        "errors": dict(timings.errors),
        "calls_per_s": round(calls / timings.seconds, 1) if timings.seconds else None,
        "overall_ms": percentiles(timings.all_ms),
        "mixes": {
            name: {
                "ms": percentiles(values),
                "mean_drivers_returned": round(sum(found[name]) / len(found[name]), 1),
            }
            for name, values in timings.ms.items()
        },
        "cpu_ms_per_call": per_call,
        "processes": usage,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add = parser.add_argument
    add("--drivers", type=int, default=100_000, help="live drivers (default 100000)")
    add("--city-radius-m", type=float, default=30_000.0, help="drivers' disc (default 30000)")
    add("--busy-every", type=int, default=4, help="every n-th driver busy (default 4; 0: none)")
    add("--mixes", type=lambda s: [parse_mix(m) for m in s.split(",")],
        default=[Mix(1_000, 20), Mix(5_000, 20), Mix(20_000, 50)],
        help="radius_m:max_results,... (default 1000:20,5000:20,20000:50)")  # fmt: skip
    add("--all-drivers", action="store_true", help="available_only off (default on)")
    add("--calls", type=int, default=2_000, help="searches in total (default 2000)")
    add("--concurrency", type=int, default=4, help="searches in flight (default 4)")
    add("--max-seconds", type=float, default=120.0, help="stop starting calls after (default 120)")
    add("--settle-timeout", type=float, default=120.0, help="wait for the persister (default 120)")
    add("--live-window", type=float, default=300.0, help="the services' live window in s")
    add("--seed", type=int, default=1, help="random seed (default 1)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ridemesh-bench-nearby-") as tmp:
        settings = MeshSettings(
            run_dir=Path(tmp), env={"RIDEMESH_LIVE_WINDOW_S": str(args.live_window)}
        )
        with start_mesh(settings, before_services=migrate) as mesh:
            result = run(mesh, args)
    print(json.dumps(result))


def run(mesh: Mesh, args: argparse.Namespace) -> dict[str, Any]:
    assert mesh.envoy is not None
    assert mesh.redis_url is not None
    loaded = asyncio.run(prepare(mesh.redis_url, args))
    roots = mesh_roots(mesh)
    before = usage_of(roots)
    timings, found = asyncio.run(run_searches(mesh.envoy.address, mesh_token(mesh), args))
    usage = usage_report(before, usage_of(roots))
    # Every driver must still be live at the end, or later searches saw a thinner city.
    loaded["oldest_fix_age_at_end_s"] = round(time.time() - loaded.pop("loaded_at"), 1)
    return report(args, loaded, timings, found, usage)


if __name__ == "__main__":
    main()
