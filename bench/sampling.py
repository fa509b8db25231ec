"""Sampling-hints benchmark: a mixed simulated fleet against one mesh, twice — hints ignored
(everyone every 4 s) and hints honoured — reporting fixes/s, mesh CPU and watcher freshness.

The fleet: `--parked` of the drivers park where they start (they go IDLE after the mesh's
RIDEMESH_IDLE_AFTER_S, shortened here so a short run sees it), the rest cruise; riders request
rides, so some drivers are on the way to a pickup or on a ride. Watchers (WatchDriver, ops) follow
a sample of drivers, one of them moving to another driver every `--rotate` seconds (a rider or
ops opening a map, which asks the driver for a fix now). Every 0.5 s, for each watched driver:
the distance between where the simulated car truly is and the position its watcher shows, and the
age of the watcher's newest fix. Each phase gets its own city (centre) and drivers, so nothing
carries over.

    .venv/bin/python -m bench.sampling --drivers 200 --out docs/bench/sampling-DATE.json
    make bench SCENARIO=sampling    (the defaults, into docs/bench/sampling.json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from grpc import aio

from bench.procstat import usage_of
from bench.run import machine
from bench.stream import mesh_roots, mesh_token
from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1.common_pb2 import DriverLocation
from ridemesh.v1.location_service_pb2 import DriverActivity
from services.domain.geodesy import haversine_m
from services.history.migrate import run_migrations
from services.ops.mesh.supervisor import Mesh, MeshSettings, start_mesh
from services.ops.simulator.driver import SimulatedDriver
from services.ops.simulator.run import Simulation
from services.ops.simulator.settings import SimSettings

SAMPLE_EVERY_S = 0.5
# Closing every stream and cancelling the riders' open rides takes a few seconds; never more.
STOP_TIMEOUT_S = 60.0
CENTRES = {"ignored": (52.5200, 13.4050), "honoured": (48.8566, 2.3522)}  # Berlin, Paris


@dataclass
class Watcher:
    """One WatchDriver stream and the newest position it showed."""

    driver: SimulatedDriver
    task: asyncio.Task[None] | None = None
    latest: DriverLocation | None = None


@dataclass
class Samples:
    """What the sampler saw, by the watched driver's activity then (its last hint)."""

    error_m: dict[str, list[float]] = field(default_factory=dict)
    age_s: dict[str, list[float]] = field(default_factory=dict)

    def add(self, group: str, error_m: float, age_s: float) -> None:
        for key in (group, "all"):
            self.error_m.setdefault(key, []).append(error_m)
            self.age_s.setdefault(key, []).append(age_s)


def _quantiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"n": len(ordered), "p50": at(0.5), "p95": at(0.95), "max": round(ordered[-1], 2)}


def _group(driver: SimulatedDriver) -> str:
    hint = driver.hint
    if hint is None:
        return "unknown"
    return DriverActivity.Name(hint.activity).removeprefix("DRIVER_ACTIVITY_").lower()


@dataclass
class Opener:
    """Opens WatchDriver streams as ops."""

    stub: location_grpc.LocationServiceAsyncStub
    metadata: tuple[tuple[str, str], ...]

    def open(self, watcher: Watcher) -> None:
        watcher.latest = None
        watcher.task = asyncio.create_task(self._follow(watcher))

    async def _follow(self, watcher: Watcher) -> None:
        request = pb.WatchDriverRequest(driver_id=watcher.driver.driver_id)
        try:
            async for response in self.stub.WatchDriver(request, metadata=self.metadata):
                watcher.latest = response.location
        except aio.AioRpcError as exc:
            if exc.code().name != "CANCELLED":
                print(f"bench.sampling: watcher ended: {exc.code().name}", file=sys.stderr)


async def _sample(simulation: Simulation, watchers: list[Watcher], samples: Samples) -> None:
    now = time.time()
    for watcher in watchers:
        latest = watcher.latest
        if latest is None:
            continue
        driver = watcher.driver
        await driver.advance()  # where the car truly is now, not at its last fix
        true_lat, true_lng = simulation.grid.to_latlng(driver.car.x, driver.car.y)
        shown = latest.position
        error = haversine_m(true_lat, true_lng, shown.latitude, shown.longitude)
        age = now - latest.recorded_at.ToNanoseconds() / 1e9
        samples.add(_group(driver), error, age)


def _activity_counts(drivers: list[SimulatedDriver]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for driver in drivers:
        counts[_group(driver)] = counts.get(_group(driver), 0) + 1
    return counts


async def phase(args: argparse.Namespace, mesh: Mesh, label: str, honour: bool) -> dict[str, Any]:
    """One run of the fleet: warm up, then measure for `--measure` seconds."""
    assert mesh.envoy is not None
    assert mesh.keys is not None
    settings = SimSettings(
        target=mesh.envoy.address,
        drivers=args.drivers,
        ride_rate_per_min=args.ride_rate,
        center=CENTRES[label],
        # Its own seed per phase: driver ids follow the seed, and each phase needs new drivers.
        seed=args.seed + int(honour),
        fix_interval_s=(4.0, 4.0),
        honour_hints=honour,
        parked_fraction=args.parked,
        demo_zones=False,
        rider_patience_s=30.0,
    )
    simulation = Simulation(settings, mesh.keys)
    rng = random.Random(args.seed)
    running = asyncio.create_task(simulation.run())
    metadata = (("authorization", f"Bearer {mesh_token(mesh)}"),)
    async with aio.insecure_channel(mesh.envoy.address) as channel:
        stub = location_grpc.LocationServiceStub(channel)
        opener = Opener(stub, metadata)
        async with asyncio.timeout(60):  # the drivers are made as run() starts
            while len(simulation.drivers) < args.drivers:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        watched = rng.sample(simulation.drivers, args.watchers)
        watchers = [Watcher(d) for d in watched]
        for watcher in watchers:
            opener.open(watcher)
        await asyncio.sleep(args.warmup)
        roots = mesh_roots(mesh)
        before_cpu = usage_of(roots)
        sent_before, requests_before = simulation.stats.fixes_sent, simulation.stats.fix_requests
        samples = Samples()
        started = time.monotonic()
        next_rotate = started + args.rotate
        while (elapsed := time.monotonic() - started) < args.measure:
            await _sample(simulation, watchers, samples)
            if time.monotonic() >= next_rotate:
                next_rotate += args.rotate
                _rotate(watchers, simulation.drivers, rng, opener)
            await asyncio.sleep(SAMPLE_EVERY_S)
        window = elapsed
        after_cpu = usage_of(roots)
        sent = simulation.stats.fixes_sent - sent_before
        activities = _activity_counts(simulation.drivers)
        for watcher in watchers:
            if watcher.task is not None:
                watcher.task.cancel()
    simulation.stop.set()
    async with asyncio.timeout(STOP_TIMEOUT_S):
        await running
    cpu_s = sum(after_cpu[n].cpu_s - before_cpu[n].cpu_s for n in after_cpu if n in before_cpu)
    return {
        "hints": "honoured" if honour else "ignored",
        "window_s": round(window, 1),
        "fixes_per_s": round(sent / window, 1),
        "mesh_cpu_s_per_s": round(cpu_s / window, 3),
        "fix_requests": simulation.stats.fix_requests - requests_before,
        "drivers_by_activity_at_end": activities,
        "error_m": {k: _quantiles(v) for k, v in sorted(samples.error_m.items())},
        "age_s": {k: _quantiles(v) for k, v in sorted(samples.age_s.items())},
        "stats": simulation.stats.summary(),
    }


def _rotate(
    watchers: list[Watcher],
    drivers: list[SimulatedDriver],
    rng: random.Random,
    opener: Opener,
) -> None:
    """One watcher moves to a driver nobody watches (a new map opened)."""
    watcher = rng.choice(watchers)
    if watcher.task is not None:
        watcher.task.cancel()
    watched = {w.driver.driver_id for w in watchers}
    watcher.driver = rng.choice([d for d in drivers if d.driver_id not in watched])
    opener.open(watcher)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add = parser.add_argument
    add("--drivers", type=int, default=200)
    add("--parked", type=float, default=0.6, help="share of drivers parked (default 0.6)")
    add("--ride-rate", type=float, default=20.0, help="rides per minute (default 20)")
    add("--watchers", type=int, default=30, help="WatchDriver streams (default 30)")
    add("--rotate", type=float, default=2.0, help="one watcher moves this often, s")
    add("--idle-after", type=float, default=20.0, help="RIDEMESH_IDLE_AFTER_S (default 20)")
    add("--warmup", type=float, default=40.0, help="seconds before measuring (default 40)")
    add("--measure", type=float, default=60.0, help="seconds measured per phase (default 60)")
    add("--seed", type=int, default=19)
    add("--out", type=Path, help="write the report here as JSON")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Starts the mesh (outside any event loop: migrations run their own), then both phases."""
    with tempfile.TemporaryDirectory(prefix="ridemesh-bench-sampling-") as tmp:
        settings = MeshSettings(
            run_dir=Path(tmp),
            env={
                "RIDEMESH_IDLE_AFTER_S": str(args.idle_after),
                "RIDEMESH_FIX_RATE_PER_S": "1000",
                "RIDEMESH_FIX_BURST": "1000",
            },
        )

        def migrate(mesh: Mesh) -> None:
            assert mesh.database_url is not None
            run_migrations(mesh.database_url)

        with start_mesh(settings, before_services=migrate) as mesh:
            phases = {
                "ignored": asyncio.run(phase(args, mesh, "ignored", honour=False)),
                "honoured": asyncio.run(phase(args, mesh, "honoured", honour=True)),
            }
    ignored, honoured = phases["ignored"], phases["honoured"]
    return {
        "scenario": "sampling",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": ".venv/bin/python -m bench.sampling " + " ".join(sys.argv[1:]),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "phases": phases,
        "fixes_saved_share": round(1 - honoured["fixes_per_s"] / ignored["fixes_per_s"], 3),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))  # one line: bench.run reads the last line


if __name__ == "__main__":
    main()
