"""Runs a simulation: mints every client's token, starts the drivers and riders, stops them
cleanly, and reports what happened."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import uuid
from pathlib import Path

from grpc import aio

from ridemesh.v1.geo_query_service_pb2 import Geofence
from services.auth.identity import Role
from services.auth.keys import DevKeys, ensure_dev_keys, mint_token
from services.ops.simulator.city import Grid
from services.ops.simulator.driver import Metadata, SimulatedDriver
from services.ops.simulator.pacing import Pacer
from services.ops.simulator.rider import Riders
from services.ops.simulator.settings import SimSettings
from services.ops.simulator.stats import Stats
from services.ops.simulator.zones import ensure_demo_zones

log = logging.getLogger(__name__)


class Simulation:
    """A city's drivers and riders against one mesh; `stop` ends it from outside."""

    def __init__(self, settings: SimSettings, keys: DevKeys) -> None:
        self.settings = settings
        self.stats = Stats()
        self.stop = asyncio.Event()
        self._keys = keys
        self._rng = random.Random(settings.seed)
        self.run_id = uuid.UUID(int=self._rng.getrandbits(128)).hex[:8]
        self.grid = Grid(*settings.center, settings.block_m, settings.city_radius_m)
        self.drivers: list[SimulatedDriver] = []
        self.riders: Riders | None = None
        self.zones: list[Geofence] = []

    def bearer(self, sub: str, role: Role) -> Metadata:
        """Call metadata for one simulated app, signed as its own user."""
        token = mint_token(
            self._keys.private_pem(),
            self._keys.kid,
            sub=sub,
            role=role,
            ttl_s=self.settings.token_ttl_s,
        )
        return (("authorization", f"Bearer {token}"),)

    async def _demo_zones(self, channel: aio.Channel) -> None:
        """The city's zones, created as an ops user would; a mesh that refuses leaves none."""
        try:
            self.zones = await ensure_demo_zones(
                channel, self.bearer(f"sim-ops-{self.run_id}", Role.OPS), self.grid
            )
        except aio.AioRpcError as exc:
            log.warning("no demo zones: %s: %s", exc.code().name, exc.details())

    async def run(self) -> Stats:
        """Runs until `stop` is set or the duration passes, then closes every stream."""
        async with aio.insecure_channel(self.settings.target) as channel:
            if self.settings.demo_zones:
                await self._demo_zones(channel)
            self.drivers = [
                SimulatedDriver(
                    f"sim-{self.run_id}-{n}",
                    self.bearer(f"sim-{self.run_id}-{n}", Role.DRIVER),
                    channel,
                    self.grid,
                    self.settings,
                    self.stats,
                    random.Random(self._rng.getrandbits(64)),
                )
                for n in range(1, self.settings.drivers + 1)
            ]
            self.riders = riders = Riders(
                channel,
                lambda rider_id: self.bearer(rider_id, Role.RIDER),
                self.grid,
                self.settings,
                self.stats,
                random.Random(self._rng.getrandbits(64)),
                self.run_id,
            )
            pacer = Pacer(self.settings.stream_open_rate_per_s)
            tasks = [asyncio.create_task(d.run(self.stop, pacer)) for d in self.drivers]
            tasks.append(asyncio.create_task(riders.run(self.stop)))
            if self.settings.duration_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.settings.duration_s)
                self.stop.set()
            await asyncio.gather(*tasks)
            await riders.wind_down()
        return self.stats


async def simulate(settings: SimSettings, keys_dir: Path) -> Stats:
    """The `ridemesh simulate` command's body: runs until SIGINT/SIGTERM or the duration."""
    simulation = Simulation(settings, ensure_dev_keys(keys_dir))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, simulation.stop.set)
    print(
        f"simulating {settings.drivers} drivers and {settings.ride_rate_per_min:g} rides/min "
        f"around {settings.center[0]},{settings.center[1]} via {settings.target} "
        f"(run {simulation.run_id}); Ctrl-C stops",
        flush=True,
    )
    try:
        return await simulation.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
