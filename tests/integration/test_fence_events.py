"""Geofence events against a real Redis: two tracker replicas, restarts, zone swaps, watchers."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis
from shapely.geometry import box

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverLocation, LatLng
from services.domain.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.geo.fence_events import (
    FenceTracker,
    watch_geofence_events,
    zone_entry,
)
from services.geo.zone_end import ZoneEnder
from services.geo.zone_index import Zone, ZoneIndex, ZoneTiming
from services.live.events import WATCH_DEPTH, EventFeed, EventLog, fix_json
from services.live.ingest import StreamId, parse_stream_id
from services.live.names import (
    ZONES_GROUP,
    events_meta_key,
    events_stream,
    fence_state_key,
    ingest_stream,
)
from services.live.replies import text
from services.ops.mesh.redis_server import RedisServer
from services.ops.simulator.city import Car, Grid, gps_fix
from tests.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

REDIS_DB = 7
ENTER = pb.GeofenceTransition.GEOFENCE_TRANSITION_ENTER
EXIT = pb.GeofenceTransition.GEOFENCE_TRANSITION_EXIT
DWELL = pb.GeofenceTransition.GEOFENCE_TRANSITION_DWELL
BASE_MS = 1_764_331_200_000

# A 0.1° square near Berlin (lon/lat order) and its eastern neighbour sharing an edge.
SQUARE = Zone("sq", "The square", {"kind": "pickup", "city": "ber"}, box(13.0, 52.0, 13.1, 52.1))
EAST = Zone("east", "East of it", {"kind": "pickup"}, box(13.1, 52.0, 13.2, 52.1))
WEST_OF = (52.05, 12.95)
INSIDE = (52.05, 13.05)
INSIDE_TOO = (52.06, 13.04)
EAST_OF = (52.05, 13.15)


@dataclass
class Zones:
    """Stands in for the zone cache: tests swap `index` as a refresh would."""

    index: ZoneIndex


class Replica:
    """What one GeoQuery process holds: its own connections, hubs and tracker."""

    def __init__(self, url: str, zones: Zones, claim_idle_s: float = 10.0) -> None:
        self.redis = Redis.from_url(url)
        self.events = EventFeed(self.redis)
        self.log = EventLog(self.redis)
        self.tracker = FenceTracker(self.redis, zones, claim_idle_s=claim_idle_s)

    async def start(self) -> Replica:
        await self.events.start()
        await self.tracker.start()
        return self

    async def stop(self) -> None:
        await self.tracker.stop()
        await self.events.stop()
        await self.redis.aclose()


class Watcher:
    """Runs watch_geofence_events in a task, queueing what it yields."""

    def __init__(self, replica: Replica, zones: Zones, request: pb.WatchGeofenceEventsRequest):
        self.queue: asyncio.Queue[pb.GeofenceEvent] = asyncio.Queue()
        self.token = ""
        self._task = asyncio.create_task(self._run(replica, zones, request))

    async def _run(
        self, replica: Replica, zones: Zones, request: pb.WatchGeofenceEventsRequest
    ) -> None:
        async for response in watch_geofence_events(replica.events, replica.log, zones, request):
            self.token = response.resume_token
            await self.queue.put(response.event)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def fix(
    driver_id: str, seq: int, point: tuple[float, float], t_ms: int | None = None
) -> DriverLocation:
    location = DriverLocation(
        driver_id=driver_id, position=LatLng(latitude=point[0], longitude=point[1]), seq=seq
    )
    location.recorded_at.FromMilliseconds(BASE_MS + seq * 1000 if t_ms is None else t_ms)
    return location


async def publish_fix(publisher: Redis, location: DriverLocation) -> StreamId:
    """Enters a fix in the ingest log, as LocationService does; its entry id."""
    return parse_stream_id(
        await publisher.xadd(ingest_stream(0), {"p": location.SerializeToString()})
    )


async def handled(publisher: Redis, entry: StreamId) -> bool:
    """Whether the zones group has been handed the entry and every entry handed out is
    acknowledged (a replica acknowledges only after applying)."""
    groups: Any = await publisher.xinfo_groups(ingest_stream(0))
    group = next(g for g in groups if text(g["name"]) == ZONES_GROUP)
    return parse_stream_id(group["last-delivered-id"]) >= entry and group["pending"] == 0


async def send(publisher: Redis, replicas: list[Replica], location: DriverLocation) -> None:
    """Enters a fix as LocationService does and waits until one of the replicas handled it
    (they share the log through their consumer group)."""
    entry = await publish_fix(publisher, location)
    async with asyncio.timeout(5.0):
        # Redis has no event for this; poll.
        while not await handled(publisher, entry):  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def enter_entry(location: DriverLocation, zone: Zone) -> dict[str, str]:
    """An ENTER as the tracker's script logs it."""
    return {"k": "geofence.enter", "f": fix_json(location), "s": zone_entry(zone), "r": ""}


async def publish_sentinel(publisher: Redis, zone: Zone) -> str:
    """An ENTER of `zone` by a made-up driver, logged straight into the event log."""
    driver_id = f"sentinel-{uuid.uuid4().hex[:8]}"
    entry = enter_entry(fix(driver_id, 1, INSIDE), zone)
    entry["e"] = text(await publisher.hget(events_meta_key(0), "e") or b"")
    await publisher.xadd(events_stream(0), entry)  # type: ignore[arg-type]
    return driver_id


async def collect(watcher: Watcher, publisher: Redis, zone: Zone) -> list[pb.GeofenceEvent]:
    """Every event the watcher got so far: the log keeps order, so once a sentinel logged now
    comes out, everything logged before it has come out too."""
    sentinel = await publish_sentinel(publisher, zone)
    events = []
    async with asyncio.timeout(5.0):
        while (event := await watcher.queue.get()).driver_id != sentinel:
            if not event.driver_id.startswith("sentinel-"):
                events.append(event)
    return events


async def watching(
    replica: Replica, zones: Zones, publisher: Redis, zone: Zone, **request: object
) -> Watcher:
    """A watcher whose subscription is known to be live (a sentinel got through)."""
    watcher = Watcher(replica, zones, pb.WatchGeofenceEventsRequest(**request))  # type: ignore[arg-type]
    async with asyncio.timeout(5.0):
        while True:
            sentinel = await publish_sentinel(publisher, zone)
            try:
                async with asyncio.timeout(0.1):
                    while (await watcher.queue.get()).driver_id != sentinel:
                        pass
                return watcher
            except TimeoutError:
                continue


def summary(events: list[pb.GeofenceEvent]) -> list[tuple[int, str, str, int]]:
    return [
        (e.transition, e.driver_id, e.geofence_id, e.event_time.ToMilliseconds()) for e in events
    ]


@pytest.fixture(scope="module")
async def redis_url(redis_server: RedisServer) -> str:
    url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    return url


@pytest.fixture
async def publisher(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def zones() -> Zones:
    return Zones(ZoneIndex([SQUARE]))


@pytest.fixture
async def replicas(redis_url: str, zones: Zones, publisher: Redis) -> AsyncIterator[list[Replica]]:
    """Two GeoQuery replicas on the same Redis, sharing the ingest log as one consumer group
    (started: every fix entered from now on is handed to one of them)."""
    pair = [await Replica(redis_url, zones).start() for _ in range(2)]
    yield pair
    for replica in pair:
        await replica.stop()


def driver() -> str:
    return f"drv-{uuid.uuid4().hex[:8]}"


async def test_two_replicas_report_one_enter_then_one_exit(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    watchers = [await watching(r, zones, publisher, SQUARE) for r in replicas]
    applied = sum(r.tracker.stats.applied for r in replicas)
    stale = sum(r.tracker.stats.stale for r in replicas)
    d = driver()
    path = [WEST_OF, INSIDE, INSIDE_TOO, EAST_OF, EAST_OF]
    for seq, point in enumerate(path, start=1):
        await send(publisher, replicas, fix(d, seq, point))

    for watcher in watchers:  # each replica's watchers see the same single pair
        events = await collect(watcher, publisher, SQUARE)
        assert summary(events) == [
            (ENTER, d, "sq", BASE_MS + 2000),
            (EXIT, d, "sq", BASE_MS + 4000),
        ]
        enter, exit_ = events
        assert enter.geofence_display_name == "The square"
        assert (enter.position.latitude, enter.position.longitude) == INSIDE
        assert (exit_.position.latitude, exit_.position.longitude) == EAST_OF
        await watcher.stop()
    # Each fix was handed to one replica and applied once: none was left for the other to race.
    assert sum(r.tracker.stats.applied for r in replicas) - applied == len(path)
    assert sum(r.tracker.stats.stale for r in replicas) - stale == 0


async def test_the_replicas_share_the_fixes_each_handled_once(
    replicas: list[Replica], publisher: Redis
) -> None:
    before = [r.tracker.stats.handled for r in replicas]
    for n in range(20):
        await send(publisher, replicas, fix(driver(), 1, WEST_OF if n % 2 else INSIDE))
    shares = [r.tracker.stats.handled - b for r, b in zip(replicas, before, strict=True)]
    assert sum(shares) == 20
    assert all(share > 0 for share in shares), shares  # the work split, not duplicated


async def test_fixes_a_dead_replica_read_and_never_finished_are_taken_over(
    redis_url: str, zones: Zones, publisher: Redis
) -> None:
    lone = await Replica(redis_url, zones).start()  # makes sure the group exists
    await lone.stop()
    d = driver()
    await publish_fix(publisher, fix(d, 1, INSIDE))
    # A replica reads the fix as the group's consumer, then dies before handling it.
    taken: Any = await publisher.xreadgroup(ZONES_GROUP, "died", {ingest_stream(0): ">"}, count=10)
    assert any(DriverLocation.FromString(fields[b"p"]).driver_id == d for _, fields in taken[0][1])
    heir = await Replica(redis_url, zones, claim_idle_s=0.2).start()
    try:
        await until(lambda: heir.tracker.stats.applied >= 1, timeout=10.0)
        assert await publisher.hget(fence_state_key(d), "z") == f"sq@I@{BASE_MS + 1000}".encode()
        pending = await publisher.xpending(ingest_stream(0), ZONES_GROUP)
        assert pending["pending"] == 0  # taken over, handled and acknowledged
    finally:
        await heir.stop()


async def test_state_lives_in_redis_with_a_ttl(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    d = driver()
    await send(publisher, replicas, fix(d, 3, INSIDE))
    state = await publisher.hgetall(fence_state_key(d))
    # The zones the driver holds: each with its status (I: entered) since its fix's time.
    t = str(BASE_MS + 3000).encode()
    assert state == {
        b"t": t,
        b"s": b"3",
        b"z": b"sq@I@" + t,
        b"f": fix_json(fix(d, 3, INSIDE)).encode(),
    }
    assert 86000 < await publisher.ttl(fence_state_key(d)) <= 86400


async def test_zone_state_survives_a_replica_restart(
    redis_url: str, zones: Zones, publisher: Redis
) -> None:
    first = await Replica(redis_url, zones).start()
    watcher = await watching(first, zones, publisher, SQUARE)
    d = driver()
    await until_live(first, publisher)
    await send(publisher, [first], fix(d, 1, INSIDE))
    assert [e.transition for e in await collect(watcher, publisher, SQUARE)] == [ENTER]
    await watcher.stop()
    await first.stop()

    second = await Replica(redis_url, zones).start()
    try:
        watcher = await watching(second, zones, publisher, SQUARE)
        await until_live(second, publisher)
        await send(publisher, [second], fix(d, 2, INSIDE_TOO))  # still inside: no second ENTER
        await send(publisher, [second], fix(d, 3, EAST_OF))
        assert summary(await collect(watcher, publisher, SQUARE)) == [
            (EXIT, d, "sq", BASE_MS + 3000)
        ]
        await watcher.stop()
    finally:
        await second.stop()


async def until_live(replica: Replica, publisher: Redis) -> None:
    """Waits until a lone replica's fix subscription delivers."""
    warmup = f"warmup-{uuid.uuid4().hex[:8]}"
    async with asyncio.timeout(5.0):
        for seq in range(1, 1000):
            await publish_fix(publisher, fix(warmup, seq, WEST_OF))
            await asyncio.sleep(0.01)
            if replica.tracker.stats.handled:
                return


async def test_a_zone_added_while_the_driver_is_inside_enters_at_the_next_fix(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    zones.index = ZoneIndex()
    d = driver()
    await send(publisher, replicas, fix(d, 1, INSIDE))
    zones.index = ZoneIndex([SQUARE])  # a refresh swaps the index; no restart
    watcher = await watching(replicas[1], zones, publisher, SQUARE, geofence_ids=["sq"])
    await send(publisher, replicas, fix(d, 2, INSIDE_TOO))
    await send(publisher, replicas, fix(d, 3, INSIDE))
    assert summary(await collect(watcher, publisher, SQUARE)) == [(ENTER, d, "sq", BASE_MS + 2000)]
    await watcher.stop()


async def test_duplicate_and_stale_fixes_produce_no_event(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    watcher = await watching(replicas[0], zones, publisher, SQUARE)
    d = driver()
    await send(publisher, replicas, fix(d, 5, INSIDE))
    await send(publisher, replicas, fix(d, 5, INSIDE))  # the same fix again
    await send(publisher, replicas, fix(d, 4, EAST_OF))  # older, outside: must not EXIT
    await send(publisher, replicas, fix(d, 3, EAST_OF, t_ms=BASE_MS + 5000))  # same time, lower seq
    await send(publisher, replicas, fix(d, 6, INSIDE_TOO))
    await send(publisher, replicas, fix(d, 7, EAST_OF))
    assert summary(await collect(watcher, publisher, SQUARE)) == [
        (ENTER, d, "sq", BASE_MS + 5000),
        (EXIT, d, "sq", BASE_MS + 7000),
    ]
    await watcher.stop()


async def test_moving_into_a_neighbour_exits_first_then_enters(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    zones.index = ZoneIndex([SQUARE, EAST])
    watcher = await watching(replicas[0], zones, publisher, SQUARE)
    d = driver()
    await send(publisher, replicas, fix(d, 1, INSIDE))
    await send(publisher, replicas, fix(d, 2, EAST_OF))
    assert summary(await collect(watcher, publisher, SQUARE)) == [
        (ENTER, d, "sq", BASE_MS + 1000),
        (EXIT, d, "sq", BASE_MS + 2000),
        (ENTER, d, "east", BASE_MS + 2000),
    ]
    await watcher.stop()


async def test_a_zone_a_replica_has_not_loaded_yet_is_kept_without_an_event(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    """A replica whose index lacks a zone another replica entered (a new zone, loaded there
    first) must neither exit it nor drop it: only the zone's end does that."""
    big = Zone("big", "Around both", {}, box(12.9, 51.9, 13.3, 52.2))
    zones.index = ZoneIndex([SQUARE, big])
    watcher = await watching(replicas[0], zones, publisher, SQUARE)
    d = driver()
    await send(publisher, replicas, fix(d, 1, INSIDE))
    zones.index = ZoneIndex([big])  # a replica that has not loaded the square
    retried = sum(r.tracker.stats.retried for r in replicas)
    await send(publisher, replicas, fix(d, 2, INSIDE_TOO))
    held = f"big@I@{BASE_MS + 1000},sq@I@{BASE_MS + 1000}".encode()
    assert await publisher.hget(fence_state_key(d), "z") == held
    # Telling what the driver left takes a second round to look the zone up.
    assert sum(r.tracker.stats.retried for r in replicas) > retried
    zones.index = ZoneIndex([SQUARE, big])  # loaded now: leaving both is two EXITs
    await send(publisher, replicas, fix(d, 3, (52.5, 14.0)))  # out of everything
    assert sorted(summary(await collect(watcher, publisher, SQUARE))) == sorted(
        [
            (ENTER, d, "big", BASE_MS + 1000),
            (ENTER, d, "sq", BASE_MS + 1000),
            (EXIT, d, "big", BASE_MS + 3000),
            (EXIT, d, "sq", BASE_MS + 3000),
        ]
    )
    await watcher.stop()


async def test_watchers_filter_by_id_and_by_labels(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    airport = Zone(
        "air", "Airport", {"kind": "airport", "city": "ber"}, box(13.0, 52.0, 13.2, 52.1)
    )
    zones.index = ZoneIndex([SQUARE, EAST, airport])
    by_id = await watching(replicas[0], zones, publisher, EAST, geofence_ids=["east", "air"])
    by_labels = await watching(
        replicas[1], zones, publisher, SQUARE, labels={"kind": "pickup", "city": "ber"}
    )
    both = await watching(
        replicas[0], zones, publisher, EAST, geofence_ids=["east", "sq"], labels={"kind": "pickup"}
    )
    d = driver()
    for seq, point in enumerate([INSIDE, EAST_OF, (52.5, 14.0)], start=1):
        await send(publisher, replicas, fix(d, seq, point))

    assert [(e.transition, e.geofence_id) for e in await collect(by_id, publisher, EAST)] == [
        (ENTER, "air"),
        (ENTER, "east"),
        (EXIT, "air"),
        (EXIT, "east"),
    ]
    assert [(e.transition, e.geofence_id) for e in await collect(by_labels, publisher, SQUARE)] == [
        (ENTER, "sq"),
        (EXIT, "sq"),
    ]
    assert [(e.transition, e.geofence_id) for e in await collect(both, publisher, EAST)] == [
        (ENTER, "sq"),
        (EXIT, "sq"),
        (ENTER, "east"),
        (EXIT, "east"),
    ]
    for watcher in (by_id, by_labels, both):
        await watcher.stop()


async def test_unknown_ids_are_not_found_and_nothing_is_subscribed(
    replicas: list[Replica], zones: Zones
) -> None:
    feed = replicas[0].events
    sinks = feed.sinks
    request = pb.WatchGeofenceEventsRequest(geofence_ids=["sq", "no-such-zone"])
    with pytest.raises(NotFound, match="'no-such-zone'"):
        await anext(watch_geofence_events(feed, replicas[0].log, zones, request))
    assert feed.sinks == sinks


async def test_a_watcher_that_stops_is_unsubscribed(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    feed = replicas[0].events
    watcher = await watching(replicas[0], zones, publisher, SQUARE)
    assert feed.sinks == 1
    await watcher.stop()
    assert feed.sinks == 0


async def test_a_burst_conflates_but_events_still_alternate(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    watcher = await watching(replicas[0], zones, publisher, SQUARE)
    d = driver()
    # Ends inside: a fix inside a zone always goes to Redis, so its seq marks the end.
    points = [INSIDE if seq % 3 else EAST_OF for seq in range(1, 301)] + [INSIDE]
    for seq, point in enumerate(points, start=1):  # no waiting: the trackers fall behind
        await publish_fix(publisher, fix(d, seq, point))

    async def last_applied() -> bool:
        return await publisher.hget(fence_state_key(d), "s") == str(len(points)).encode()

    async with asyncio.timeout(10.0):
        while True:
            if await last_applied():
                break
            await asyncio.sleep(0.01)
    events = await collect(watcher, publisher, SQUARE)
    transitions = [e.transition for e in events]
    assert transitions, "a burst of crossings produced no event at all"
    assert transitions == [ENTER, EXIT] * (len(transitions) // 2) + [ENTER]
    times = [e.event_time.ToMilliseconds() for e in events]
    assert times == sorted(set(times))
    await watcher.stop()


async def test_a_slow_watcher_is_ended_and_resumes_with_its_token_losing_nothing(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    replica = replicas[0]
    request = pb.WatchGeofenceEventsRequest(geofence_ids=["sq"])
    slow = watch_geofence_events(replica.events, replica.log, zones, request)
    first: asyncio.Future[pb.WatchGeofenceEventsResponse] = asyncio.ensure_future(anext(slow))
    async with asyncio.timeout(5.0):  # until the slow watcher's first event arrives
        while not first.done():
            await publish_sentinel(publisher, SQUARE)
            await asyncio.wait([first], timeout=0.1)
    token = first.result().resume_token
    epoch = text(await publisher.hget(events_meta_key(0), "e") or b"")
    total = WATCH_DEPTH + 100
    pipe = publisher.pipeline(transaction=False)
    for seq in range(1, total + 1):  # the slow watcher reads none of these for now
        entry = {**enter_entry(fix("slow", seq, INSIDE), SQUARE), "e": epoch}
        pipe.xadd(events_stream(0), entry)  # type: ignore[arg-type]
    last = parse_stream_id((await pipe.execute())[-1])
    # The feed hands every one to the watcher's backlog, which it does not read meanwhile.
    await until(lambda: replica.events.position.offsets[0] >= last, 10.0)  # type: ignore[union-attr]

    # It fell too far behind: told so, with what to do, instead of silently losing events.
    async def read_until_ended() -> None:
        async with asyncio.timeout(10.0):
            while True:
                await anext(slow)

    with pytest.raises(ResourceExhausted, match="resume_token"):
        await read_until_ended()
    # Resumed after its first event, it gets everything since, in order, each once.
    resumed = watch_geofence_events(
        replica.events,
        replica.log,
        zones,
        pb.WatchGeofenceEventsRequest(geofence_ids=["sq"], resume_token=token),
    )
    got: list[int] = []
    async with asyncio.timeout(10.0):
        while len(got) < total:
            event = (await anext(resumed)).event
            if event.driver_id == "slow":
                got.append(event.event_time.ToMilliseconds())
    assert got == [BASE_MS + seq * 1000 for seq in range(1, total + 1)]
    await resumed.aclose()  # type: ignore[attr-defined]


# A zone whose western edge runs along 13.0°E at 52°N, and a car parked on that line.
ON_THE_LINE = (52.05, 13.0)
TIMED = "timed"


def parked_on_the_line(count: int) -> list[tuple[float, float]]:
    """What a car standing on the zone's western line reports: the simulator's noise model (4 m
    sigma), so about half its fixes fall outside the zone and none 20 m out."""
    grid = Grid(ON_THE_LINE[0], ON_THE_LINE[1])
    car, rng = Car(0.0, 0.0, (0, 1)), random.Random(7)  # parked
    return [gps_fix(grid, car, rng)[:2] for _ in range(count)]


def timed_zone(timing: ZoneTiming) -> Zone:
    return Zone(TIMED, "Timed", {"kind": "timed"}, box(13.0, 52.0, 13.1, 52.1), timing)


async def test_a_car_parked_on_the_line_with_gps_noise_enters_once_and_never_flickers(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    zone = timed_zone(ZoneTiming(hysteresis_m=20.0))
    zones.index = ZoneIndex([zone])
    watcher = await watching(replicas[0], zones, publisher, zone)
    d = driver()
    fixes = parked_on_the_line(40)
    outside = [lat_lng for lat_lng in fixes if lat_lng[1] < 13.0]
    assert 10 < len(outside) < 30  # the test means something: the car does cross the line
    for seq, point in enumerate(fixes, start=1):
        await send(publisher, replicas, fix(d, seq, point))
    await send(publisher, replicas, fix(d, 41, (52.05, 12.999)))  # 68 m out: beyond the band
    events = summary(await collect(watcher, publisher, zone))
    first_inside = next(seq for seq, point in enumerate(fixes, start=1) if point[1] >= 13.0)
    assert events == [
        (ENTER, d, TIMED, BASE_MS + first_inside * 1000),
        (EXIT, d, TIMED, BASE_MS + 41_000),
    ]
    await watcher.stop()


async def test_without_hysteresis_the_same_car_flickers(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    """The control for the test above: the band is what keeps the events down."""
    zone = timed_zone(ZoneTiming())
    zones.index = ZoneIndex([zone])
    watcher = await watching(replicas[0], zones, publisher, zone)
    d = driver()
    for seq, point in enumerate(parked_on_the_line(40), start=1):
        await send(publisher, replicas, fix(d, seq, point))
    events = summary(await collect(watcher, publisher, zone))
    assert len(events) > 10
    await watcher.stop()


async def test_enter_waits_for_the_entry_delay_and_a_driver_passing_through_is_never_reported(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    zone = timed_zone(ZoneTiming(entry_delay_s=30.0))
    zones.index = ZoneIndex([zone])
    watcher = await watching(replicas[0], zones, publisher, zone)
    passing, staying = driver(), driver()
    for seq, point in enumerate([INSIDE, INSIDE_TOO, EAST_OF], start=1):  # 2 s inside, then out
        await send(publisher, replicas, fix(passing, seq, point, t_ms=BASE_MS + seq * 10_000))
    for seq in range(1, 6):  # inside at 0, 10, 20, 30 and 40 s
        await send(publisher, replicas, fix(staying, seq, INSIDE, t_ms=BASE_MS + seq * 10_000))
    await send(publisher, replicas, fix(staying, 6, EAST_OF, t_ms=BASE_MS + 60_000))
    assert summary(await collect(watcher, publisher, zone)) == [
        (ENTER, staying, TIMED, BASE_MS + 40_000),  # the first fix 30 s after the first inside
        (EXIT, staying, TIMED, BASE_MS + 60_000),
    ]
    await watcher.stop()


async def test_dwell_is_reported_once_after_the_dwell_time_inside(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    zone = timed_zone(ZoneTiming(dwell_s=60.0))
    zones.index = ZoneIndex([zone])
    watcher = await watching(replicas[0], zones, publisher, zone)
    d = driver()
    for seq in range(1, 6):  # inside at 30, 60, 90, 120 and 150 s
        await send(publisher, replicas, fix(d, seq, INSIDE, t_ms=BASE_MS + seq * 30_000))
    assert summary(await collect(watcher, publisher, zone)) == [
        (ENTER, d, TIMED, BASE_MS + 30_000),
        (DWELL, d, TIMED, BASE_MS + 90_000),
    ]
    await watcher.stop()


async def test_a_state_written_by_the_previous_version_still_exits(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    """Zone states stored before timing existed hold bare ids: they count as entered."""
    watcher = await watching(replicas[0], zones, publisher, SQUARE)
    d = driver()
    await publisher.hset(fence_state_key(d), mapping={"t": BASE_MS, "s": 1, "z": "sq"})
    await send(publisher, replicas, fix(d, 2, EAST_OF))
    assert summary(await collect(watcher, publisher, SQUARE)) == [(EXIT, d, "sq", BASE_MS + 2000)]
    await watcher.stop()


async def test_a_zone_that_ends_sends_exit_to_every_driver_inside_once_and_is_never_entered_again(
    replicas: list[Replica], zones: Zones, publisher: Redis
) -> None:
    zone = Zone("ending", "Ends", {}, SQUARE.geometry, ZoneTiming(entry_delay_s=30.0))
    zones.index = ZoneIndex([zone])
    watcher = await watching(replicas[0], zones, publisher, zone)
    inside, pending, elsewhere = driver(), driver(), driver()
    for seq in (1, 2):  # inside for 30 s: entered
        await send(publisher, replicas, fix(inside, seq, INSIDE, t_ms=BASE_MS + seq * 30_000))
    await send(publisher, replicas, fix(pending, 1, INSIDE))  # its ENTER not due yet
    await send(publisher, replicas, fix(elsewhere, 1, EAST_OF))
    assert summary(await collect(watcher, publisher, zone)) == [
        (ENTER, inside, "ending", BASE_MS + 60_000)
    ]

    ender = ZoneEnder(publisher)
    assert await ender.end(zone, "zone_deleted", BASE_MS + 90_000) == 1
    events = await collect(watcher, publisher, zone)
    assert summary(events) == [(EXIT, inside, "ending", BASE_MS + 90_000)]
    assert events[0].reason == "zone_deleted"
    # At the driver's last position.
    assert (events[0].position.latitude, events[0].position.longitude) == INSIDE
    assert await ender.end(zone, "zone_deleted", BASE_MS + 91_000) == 0  # idempotent

    # A replica whose index still holds the zone does not enter it again, nor exit it.
    for seq in (3, 4):
        await send(publisher, replicas, fix(inside, seq, INSIDE, t_ms=BASE_MS + seq * 30_000))
    await send(publisher, replicas, fix(pending, 2, INSIDE, t_ms=BASE_MS + 100_000))
    await send(publisher, replicas, fix(inside, 5, EAST_OF, t_ms=BASE_MS + 150_000))
    assert summary(await collect(watcher, publisher, zone)) == []
    assert b"ending" not in (await publisher.hget(fence_state_key(pending), "z") or b"")
    await watcher.stop()


async def test_a_token_older_than_the_retention_is_refused_naming_the_oldest_event_kept(
    redis_url: str, zones: Zones, publisher: Redis
) -> None:
    replica = Replica(redis_url, zones)
    replica.tracker = FenceTracker(replica.redis, zones, retention_s=0.3)
    await replica.start()
    try:
        watcher = await watching(replica, zones, publisher, SQUARE)
        d = driver()
        await send(publisher, [replica], fix(d, 1, INSIDE))
        await collect(watcher, publisher, SQUARE)
        token = watcher.token
        await watcher.stop()
        await send(publisher, [replica], fix(d, 2, EAST_OF))  # missed by the watcher
        # More than the retention later, the next event trims everything older.
        await asyncio.sleep(0.4)  # the retention is wall-clock time: nothing else to wait on
        await send(publisher, [replica], fix(d, 3, INSIDE))
        oldest: Any = await publisher.xrange(events_stream(0), count=1)
        oldest_id = oldest[0][0]
        request = pb.WatchGeofenceEventsRequest(geofence_ids=["sq"], resume_token=token)
        with pytest.raises(FailedPrecondition, match="retention") as refused:
            await anext(watch_geofence_events(replica.events, replica.log, zones, request))
        assert f"0:{text(oldest_id)}" in str(refused.value)

        # A token from before Redis lost the log (another epoch) is refused too.
        await publisher.hset(events_meta_key(0), "e", "another")
        fresh = await replica.log.current()
        fresh.epochs[0] = "before"
        request = pb.WatchGeofenceEventsRequest(geofence_ids=["sq"], resume_token=fresh.token())
        with pytest.raises(FailedPrecondition, match="reset"):
            await anext(watch_geofence_events(replica.events, replica.log, zones, request))
        # And one that is not a token at all is invalid.
        request = pb.WatchGeofenceEventsRequest(resume_token="not-a-token")
        with pytest.raises(InvalidArgument, match="resume_token"):
            await anext(watch_geofence_events(replica.events, replica.log, zones, request))
    finally:
        await replica.stop()
