"""One load-generator process: driver StreamLocations streams, WatchDriver and WatchArea
watchers."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1.common_pb2 import BoundingBox, LatLng
from services.auth.tokens import bearer_channel

# After the load window each driver closes its side and waits this long for the final durable ack.
DRAIN_S = 15.0
# Separate subchannel pools so each channel is its own TCP connection to Envoy.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
# Drivers report positions in this band (latitude) at one longitude; area watchers watch slices.
LAT_LOW, LAT_HIGH, LNG = 12.92, 13.02, 77.59
# Each driver drives up and down the band at this speed, so its fixes pass the server's
# plausible-speed filter however closely they follow each other, as a real car's do.
SPEED_MPS = 8.0
Box = tuple[float, float, float, float]  # south, west, north, east


def area_boxes(count: int, share: float) -> list[Box]:
    """`count` boxes, each holding about `share` of the drivers, spread over the band."""
    height = (LAT_HIGH - LAT_LOW) * share
    step = (LAT_HIGH - LAT_LOW - height) / max(1, count - 1)
    return [
        (LAT_LOW + k * step, LNG - 0.01, LAT_LOW + k * step + height, LNG + 0.01)
        for k in range(count)
    ]


def driver_id(run_id: str, index: int) -> str:
    """The id of a run's driver number `index`."""
    return f"bench-{run_id}-{index}"


@dataclass(frozen=True)
class LoadPlan:
    """What one worker does; times are wall clock (time.time()) shared by all workers."""

    address: str
    token: str  # the watchers' bearer token (ops)
    run_id: str
    drivers: list[int]  # global driver indexes this worker owns
    # Each driver's own token by index: a driver streams only as themselves (see driver_id).
    driver_tokens: dict[int, str]
    watched: list[int]  # subset of `drivers` that also get a WatchDriver stream
    start_at: float
    open_rate: float  # streams opened per second, across all workers
    interval_s: float
    duration_s: float
    streams_per_channel: int
    area_boxes: list[Box] = field(default_factory=list)  # one WatchArea stream per box
    # Drivers in the whole run: driver i starts at (i + 0.5) / drivers_total up the band, so the
    # drivers are spread evenly and every area box holds some even in a small run.
    drivers_total: int = 1


@dataclass
class LoadResult:
    """What one worker saw; latencies in milliseconds."""

    streams_opened: int = 0
    streams_held: int = 0  # open and not failed at the end of the load window
    fixes_sent: int = 0
    fixes_acked: int = 0
    fixes_durable: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    ack_ms: list[float] = field(default_factory=list)
    durable_ms: list[float] = field(default_factory=list)
    watch_ms: list[float] = field(default_factory=list)
    # The part of watch_ms after LocationService stamped received_at (server to watcher).
    watch_from_server_ms: list[float] = field(default_factory=list)
    # How late this worker's event loop woke from 10 ms sleeps: the load generator's own lag.
    client_lag_ms: list[float] = field(default_factory=list)
    watchers: int = 0
    watch_updates: int = 0
    # WatchArea: fix-to-watcher latency of fixes recorded after the watch began.
    area_ms: list[float] = field(default_factory=list)
    area_watchers: int = 0
    area_updates: int = 0


class Driver:
    """One driver app: a fix every interval, each seq's send time kept until acked and durable."""

    def __init__(
        self,
        driver_id: str,
        token: str,
        stub: location_grpc.LocationServiceAsyncStub,
        result: LoadResult,
        start: float,
    ):
        self.driver_id = driver_id
        self._result = result
        self._outbox: asyncio.Queue[pb.StreamLocationsRequest | None] = asyncio.Queue()
        metadata = (("authorization", f"Bearer {token}"),)
        self._call = stub.StreamLocations(self._requests(), metadata=metadata)
        self._sent: dict[int, float] = {}  # seq -> monotonic send time
        self._acked = 0
        self._durable = 0
        self.seq = 0
        # Where the driver is (`start` of the way up the band), which way it drives, and when.
        self.latitude = LAT_LOW + (LAT_HIGH - LAT_LOW) * start
        self.north = random.random() < 0.5
        self._at = time.time()
        self.failed = False
        self.closed = False

    async def _requests(self) -> Any:
        while (request := await self._outbox.get()) is not None:
            yield request

    def send_fix(self) -> None:
        self.seq += 1
        now = time.time()
        step = SPEED_MPS * (now - self._at) / 111_195 * (1 if self.north else -1)
        if not LAT_LOW <= self.latitude + step <= LAT_HIGH:
            self.north, step = not self.north, -step
        self.latitude, self._at = self.latitude + step, now
        update = pb.LocationUpdate(
            driver_id=self.driver_id,
            position=LatLng(latitude=self.latitude, longitude=LNG),
            heading_deg=0.0 if self.north else 180.0,
            speed_mps=SPEED_MPS,
            accuracy_m=5.0,
            seq=self.seq,
        )
        # recorded_at is the send time on this machine's wall clock: the watcher subtracts it.
        update.recorded_at.FromNanoseconds(time.time_ns())
        self._sent[self.seq] = time.monotonic()
        self._outbox.put_nowait(pb.StreamLocationsRequest(update=update))
        self._result.fixes_sent += 1

    def close(self) -> None:
        self.closed = True
        self._outbox.put_nowait(None)

    async def read(self) -> None:
        """Reads acks and rejections until the server ends the stream."""
        try:
            async for response in self._call:
                kind = response.WhichOneof("kind")
                if kind == "ack":
                    self._on_ack(response.ack, time.monotonic())
                elif kind == "rejected":
                    self._result.rejected[f"code {response.rejected.code}"] += 1
                    self._sent.pop(response.rejected.seq, None)
        except aio.AioRpcError as error:
            self.failed = True
            self._result.errors[f"driver {error.code().name}: {error.details()}"[:120]] += 1

    def _on_ack(self, ack: pb.LocationAck, now: float) -> None:
        result = self._result
        for seq in range(self._acked + 1, ack.seq + 1):
            if seq in self._sent:
                result.ack_ms.append((now - self._sent[seq]) * 1000)
                result.fixes_acked += 1
        self._acked = max(self._acked, ack.seq)
        for seq in range(self._durable + 1, ack.durable_seq + 1):
            sent = self._sent.pop(seq, None)
            if sent is not None:
                result.durable_ms.append((now - sent) * 1000)
                result.fixes_durable += 1
        self._durable = max(self._durable, ack.durable_seq)


async def watch(
    driver_id: str, stub: location_grpc.LocationServiceAsyncStub, result: LoadResult
) -> None:
    """Fix-to-watcher latency: receive time minus the fix's recorded_at (the driver's send time)."""
    try:
        async for response in stub.WatchDriver(pb.WatchDriverRequest(driver_id=driver_id)):
            now_ns = time.time_ns()
            location = response.location
            result.watch_ms.append((now_ns - location.recorded_at.ToNanoseconds()) / 1e6)
            result.watch_from_server_ms.append(
                (now_ns - location.received_at.ToNanoseconds()) / 1e6
            )
            result.watch_updates += 1
    except aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            result.errors[f"watch {error.code().name}: {error.details()}"[:120]] += 1


async def watch_area(
    box: Box, stub: location_grpc.LocationServiceAsyncStub, result: LoadResult
) -> None:
    """WatchArea latency: the snapshot's old fixes are skipped, later ones measured like
    WatchDriver's (receive time minus recorded_at)."""
    south, west, north, east = box
    bounds = BoundingBox(
        south_west=LatLng(latitude=south, longitude=west),
        north_east=LatLng(latitude=north, longitude=east),
    )
    began_ns = time.time_ns()
    try:
        async for response in stub.WatchArea(pb.WatchAreaRequest(bounds=bounds)):
            now_ns = time.time_ns()
            recorded_ns = response.location.recorded_at.ToNanoseconds()
            if recorded_ns >= began_ns and not response.exited:
                result.area_ms.append((now_ns - recorded_ns) / 1e6)
                result.area_updates += 1
    except aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            result.errors[f"area {error.code().name}: {error.details()}"[:120]] += 1


async def probe_lag(result: LoadResult, until: float) -> None:
    """Samples event-loop lag every 10 ms until the wall-clock time `until`."""
    loop = asyncio.get_running_loop()
    while time.time() < until:
        before = loop.time()
        await asyncio.sleep(0.01)
        result.client_lag_ms.append((loop.time() - before - 0.01) * 1000)


async def drive(driver: Driver, opened_at: float, plan: LoadPlan) -> None:
    """Fixes every interval (random phase, so sends are spread) until the load window ends."""
    end = plan.start_at + plan.duration_s
    next_send = opened_at
    while next_send < end and not driver.failed:
        await asyncio.sleep(max(0.0, next_send - time.time()))
        if driver.closed:  # the window ended while this task slept: nothing more to send
            return
        driver.send_fix()
        next_send += plan.interval_s


async def run_plan(plan: LoadPlan) -> LoadResult:
    result = LoadResult()
    channels = [
        bearer_channel(plan.address, plan.token, options=CHANNEL_OPTIONS)
        for _ in range(0, len(plan.drivers), plan.streams_per_channel)
    ]
    drivers: list[Driver] = []
    tasks: list[asyncio.Task[None]] = []
    watchers: list[asyncio.Task[None]] = []
    watched = set(plan.watched)
    watchers.append(asyncio.create_task(probe_lag(result, plan.start_at + plan.duration_s)))
    if plan.area_boxes and channels:
        await asyncio.sleep(max(0.0, plan.start_at - time.time()))
        area_stub = location_grpc.LocationServiceStub(channels[0])
        for box in plan.area_boxes:
            watchers.append(asyncio.create_task(watch_area(box, area_stub, result)))
            result.area_watchers += 1
    try:
        for n, index in enumerate(plan.drivers):
            opened_at = plan.start_at + index / plan.open_rate
            await asyncio.sleep(max(0.0, opened_at - time.time()))
            stub: location_grpc.LocationServiceAsyncStub = location_grpc.LocationServiceStub(
                channels[n // plan.streams_per_channel]
            )
            token = plan.driver_tokens[index]
            start = (index + 0.5) / max(plan.drivers_total, index + 1)
            driver = Driver(driver_id(plan.run_id, index), token, stub, result, start)
            if index in watched:
                watchers.append(asyncio.create_task(watch(driver.driver_id, stub, result)))
                result.watchers += 1
            drivers.append(driver)
            tasks.append(asyncio.create_task(driver.read()))
            first = opened_at + random.uniform(0, plan.interval_s)
            tasks.append(asyncio.create_task(drive(driver, first, plan)))
            result.streams_opened += 1
        await asyncio.sleep(max(0.0, plan.start_at + plan.duration_s - time.time()))
        result.streams_held = sum(not d.failed for d in drivers)
        for driver in drivers:
            driver.close()
        await asyncio.wait(tasks, timeout=DRAIN_S)
    finally:
        for task in tasks + watchers:
            task.cancel()
        await asyncio.gather(*tasks, *watchers, return_exceptions=True)
        for channel in channels:
            await channel.close(None)
    return result


def worker(plan: LoadPlan, results: Any) -> None:
    """Process entry point: run the plan and put its LoadResult on the `results` queue."""
    results.put(asyncio.run(run_plan(plan)))
