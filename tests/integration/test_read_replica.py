"""History reads on a real PostgreSQL streaming replica (`pg_basebackup -R`): it serves what the
primary committed once replayed, refuses writes, and a zone index loading from it picks up an
announced change the replica replays late, without waiting for its slow poll."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from services.geo.geofence_store import GeofenceStore
from services.geo.zone_cache import ZoneCache, announce_change
from services.geo.zones import parse_geofence
from services.history.store import FixRow, HistoryStore, create_engine
from services.live.fanout import Hub
from services.ops.mesh.postgres_server import PostgresReplica, PostgresServer
from services.ops.mesh.redis_server import RedisServer
from tests.waiting import until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

SLOW_POLL_S = 300.0  # the zone cache's periodic check: far longer than any wait below


@pytest.fixture(scope="module")
def primary_and_replica(
    postgres_server: PostgresServer,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, PostgresReplica]]:
    """The session's PostgreSQL, a migrated database in it, and a replica of the cluster."""
    directory: Path = tmp_path_factory.mktemp("replica")
    directory.chmod(0o755)  # the replica runs as postgres when the tests run as root
    with PostgresReplica(postgres_server, directory / "data", fsync=False) as replica:
        name = make_url(database_url).database
        read_url = make_url(replica.url).set(database=name).render_as_string(False)
        yield database_url, read_url, replica


def fix(seq: int) -> FixRow:
    at = datetime.now(UTC) - timedelta(minutes=5) + timedelta(seconds=seq)
    return FixRow("replica-driver", 52.5, 13.4, 90.0, 8.0, 5.0, at, seq, at)


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(False)


async def test_the_replica_serves_committed_history_and_refuses_writes(
    primary_and_replica: tuple[str, str, PostgresReplica],
) -> None:
    primary_url, read_url, replica = primary_and_replica
    primary, reads = create_engine(primary_url), create_engine(read_url)
    try:
        written = [fix(n) for n in range(1, 51)]
        assert await HistoryStore(primary).insert_fixes(written) == 50
        await asyncio.to_thread(_caught_up, replica)
        start, end = written[0].recorded_at, written[-1].recorded_at + timedelta(seconds=1)
        assert await HistoryStore(reads).list_fixes("replica-driver", start, end) == written
        conn = await asyncpg.connect(_dsn(read_url))
        try:
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is True
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute("DELETE FROM driver_locations")
        finally:
            await conn.close()
    finally:
        await primary.dispose()
        await reads.dispose()


def _caught_up(replica: PostgresReplica) -> None:
    deadline = time.monotonic() + 10
    while not replica.replay_caught_up():
        assert time.monotonic() < deadline, "the replica did not catch up within 10 s"
        time.sleep(0.02)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_an_announced_change_is_loaded_once_the_replica_replays_it(
    primary_and_replica: tuple[str, str, PostgresReplica], redis: Redis
) -> None:
    primary_url, read_url, replica = primary_and_replica
    primary, reads = create_engine(primary_url), create_engine(read_url)
    hub: Hub[bytes] = Hub(redis, bytes)
    await hub.start()
    cache = ZoneCache(GeofenceStore(reads), hub, SLOW_POLL_S, replica_wait_s=10.0)
    await cache.start()
    try:
        # The replica stops replaying: the zone committed now exists only on the primary.
        await asyncio.to_thread(replica.psql, "SELECT pg_wal_replay_pause()")
        zone = parse_geofence("Depot", _square_geojson(), {})
        created = await GeofenceStore(primary).create(zone)
        await announce_change(redis)
        await asyncio.sleep(0.3)  # the cache has asked the replica a few times by now
        assert cache.index.get(created.geofence_id) is None
        await asyncio.to_thread(replica.psql, "SELECT pg_wal_replay_resume()")
        await until(lambda: cache.index.get(created.geofence_id) is not None, timeout=10.0)
    finally:
        await asyncio.to_thread(replica.psql, "SELECT pg_wal_replay_resume()")
        await cache.stop()
        await hub.stop()
        await primary.dispose()
        await reads.dispose()


def _square_geojson() -> str:
    ring = [[13.0, 52.0], [13.1, 52.0], [13.1, 52.1], [13.0, 52.1], [13.0, 52.0]]
    return '{"type": "Polygon", "coordinates": [' + str(ring) + "]}"
