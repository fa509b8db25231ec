"""Zone caches on real Redis and PostGIS: every replica's index follows creates and deletes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from ridemesh.v1 import geo_query_service_pb2 as pb
from services.geo import geofences as rpc
from services.geo.geofence_store import GeofenceStore
from services.geo.zone_cache import ZoneCache, announce_change
from services.geo.zone_index import Zone
from services.geo.zones import parse_geofence
from services.history.store import create_engine
from services.live.fanout import Hub
from services.ops.mesh.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

REDIS_DB = 6
# Long enough that only the announcement can explain a prompt reload.
SLOW_POLL_S = 60.0

TEMPELHOF = json.dumps(
    {
        "type": "Polygon",
        "coordinates": [
            [[13.38, 52.46], [13.42, 52.46], [13.42, 52.48], [13.38, 52.48], [13.38, 52.46]]
        ],
    }
)


@pytest.fixture(scope="module")
async def redis_url(redis_server: RedisServer) -> str:
    url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    return url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[GeofenceStore]:
    engine = create_engine(database_url)
    yield GeofenceStore(engine)
    await engine.dispose()


@pytest.fixture(autouse=True)
async def no_zones(database_url: str) -> None:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    await conn.execute("TRUNCATE geofences")
    await conn.close()


class CountingStore:
    """The real store, counting snapshot loads and failing on demand (a database outage)."""

    def __init__(self, store: GeofenceStore) -> None:
        self.store = store
        self.loads = 0
        self.failing = False

    async def revision(self) -> int:
        if self.failing:
            raise ConnectionError("database is down (test)")
        return await self.store.revision()

    async def snapshot(self) -> tuple[int, list[Zone]]:
        if self.failing:
            raise ConnectionError("database is down (test)")
        self.loads += 1
        return await self.store.snapshot()


@pytest.fixture
async def replicas(store: GeofenceStore, redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Starts ZoneCaches as separate replicas would: each with its own Redis client."""
    started: list[tuple[ZoneCache, Hub[bytes], Redis]] = []

    async def start(source: Any = None, refresh_s: float = SLOW_POLL_S) -> ZoneCache:
        client = Redis.from_url(redis_url)
        hub: Hub[bytes] = Hub(client, bytes)
        await hub.start()
        cache = ZoneCache(source or store, hub, refresh_s)
        started.append((cache, hub, client))  # closed at the end even if the start fails
        await cache.start()
        return cache

    yield start
    for cache, hub, client in started:
        await cache.stop()
        await hub.stop()
        await client.aclose()


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until `condition` held; fails the test after `timeout`."""
    begin = time.monotonic()
    while not condition():
        if time.monotonic() - begin > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - begin


def names(cache: ZoneCache, lat: float = 52.47, lng: float = 13.40) -> list[str]:
    return [zone.display_name for zone in cache.index.containing(lat, lng)]


async def test_start_loads_existing_zones(store: GeofenceStore, replicas: Any) -> None:
    await store.create(parse_geofence("tempelhof", TEMPELHOF, {"kind": "park"}))
    cache = await replicas()
    assert names(cache) == ["tempelhof"]
    assert cache.revision == await store.revision()


async def test_two_replicas_see_each_others_create_and_delete(
    store: GeofenceStore, redis: Redis, replicas: Any
) -> None:
    one, two = await replicas(), await replicas()
    assert names(one) == names(two) == []

    request = pb.CreateGeofenceRequest(
        geofence=pb.Geofence(display_name="tempelhof", geojson=TEMPELHOF)
    )
    created = (await rpc.create_geofence(store, redis, request)).geofence
    took = await eventually(lambda: names(one) == names(two) == ["tempelhof"])
    assert took < 2.0  # by the announcement, not the 60 s poll
    assert one.index.get(created.geofence_id) is not None

    await rpc.delete_geofence(
        store, redis, pb.DeleteGeofenceRequest(geofence_id=created.geofence_id)
    )
    await eventually(lambda: names(one) == names(two) == [])
    assert two.index.get(created.geofence_id) is None


async def test_unannounced_change_is_picked_up_by_the_poll(
    store: GeofenceStore, replicas: Any
) -> None:
    cache = await replicas(refresh_s=0.2)
    await store.create(parse_geofence("quiet", TEMPELHOF, {}))  # no announcement
    await eventually(lambda: names(cache) == ["quiet"])


async def test_announcements_without_changes_do_not_reload(
    store: GeofenceStore, redis: Redis, replicas: Any
) -> None:
    counting = CountingStore(store)
    cache = await replicas(counting)
    assert counting.loads == 1
    for _ in range(20):
        await announce_change(redis)
    await asyncio.sleep(0.3)
    assert counting.loads == 1  # the revision did not move, so nothing was reloaded
    await store.create(parse_geofence("burst", TEMPELHOF, {}))
    for _ in range(20):
        await announce_change(redis)
    await eventually(lambda: names(cache) == ["burst"])
    await asyncio.sleep(0.3)
    assert counting.loads <= 3  # a burst of announcements costs a reload or two, not twenty


async def test_failed_reload_keeps_the_old_index_then_recovers(
    store: GeofenceStore, redis: Redis, replicas: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await store.create(parse_geofence("before", TEMPELHOF, {}))
    counting = CountingStore(store)
    cache = await replicas(counting, refresh_s=0.1)
    assert names(cache) == ["before"]

    counting.failing = True
    await store.create(parse_geofence("after", TEMPELHOF, {}))
    await announce_change(redis)
    await eventually(lambda: "zone index reload failed" in caplog.text)
    assert names(cache) == ["before"]  # still answering from the last good index

    counting.failing = False
    await eventually(lambda: names(cache) == ["before", "after"])


async def test_start_fails_loudly_when_the_store_is_down(
    store: GeofenceStore, replicas: Any
) -> None:
    counting = CountingStore(store)
    counting.failing = True
    with pytest.raises(ConnectionError):
        await replicas(counting)


async def test_refresh_swaps_in_a_new_index(store: GeofenceStore, replicas: Any) -> None:
    cache = await replicas()
    old = cache.index
    await store.create(parse_geofence("manual", TEMPELHOF, {}))
    await cache.refresh()
    assert names(cache) == ["manual"]
    assert cache.index is not old
    assert names_of(old) == []  # the old index is untouched, so a reader holding it is safe


def names_of(index: Any) -> list[str]:
    return [zone.display_name for zone in index.containing(52.47, 13.40)]
