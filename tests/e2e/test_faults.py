"""Faults with real processes, through Envoy: Redis killed and restarted (empty, and from its
append-only file), Redis losing entries on purpose, PostgreSQL stopped for 20 s, a LocationService
killed, Envoy restarted. Driver apps behave as the protocol asks (tests/e2e/apps.py); every test
ends by checking that every fix they made is stored exactly once, which fails if an ack ever
called a fix durable that PostgreSQL did not hold (the app would have dropped it)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc import aio
from redis.asyncio import Redis
from redis.crc import key_slot

from ridemesh.v1 import geo_query_service_pb2 as gpb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1 import ride_service_pb2 as rpb
from ridemesh.v1 import ride_service_pb2_grpc as ride_grpc
from ridemesh.v1.common_pb2 import DriverLocation
from services.auth.identity import Role
from services.auth.keys import DevKeys
from services.history.migrate import run_migrations_async
from services.history.store import HistoryStore, create_engine
from services.live import names
from services.live.client import CLUSTER_PARTITIONS
from services.live.names import PERSIST_GROUP, ingest_stream
from services.ops.mesh.envoy_proxy import EnvoyProxy
from services.ops.mesh.postgres_server import PostgresServer
from services.ops.mesh.process import ManagedProcess
from services.ops.mesh.redis_cluster import RedisClusterServer
from services.ops.mesh.redis_server import RedisServer
from services.ops.mesh.supervisor import Mesh, MeshSettings, start_mesh
from tests.e2e.apps import LEAKS, DriverApp
from tests.e2e.clients import new_driver_id
from tests.tokens import bearer, ops_channel, token

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ENV = {
    "RIDEMESH_PERSIST_MAX_AGE_S": "0.2",
    "RIDEMESH_ACK_INTERVAL_S": "0.2",
    "RIDEMESH_FIX_RATE_PER_S": "50",
    "RIDEMESH_FIX_BURST": "50",
    "RIDEMESH_PERSIST_CLAIM_IDLE_S": "1",
    "RIDEMESH_SHUTDOWN_GRACE_S": "2",
}
PERIOD_S = 0.05  # each app sends a fix this often
PG_OUTAGE_S = 20.0
EVERY_SERVICE = {"location": 1, "ride": 1, "geo": 1}
REDIS_OUTAGE_S = 3.0


class Postgres:
    """This module's own PostgreSQL, which its tests stop and start again (same data and port)."""

    def __init__(self, data_dir: Path) -> None:
        self.server = PostgresServer(data_dir, fsync=False).start()

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        """Starts it again. Call it on the main thread: PostgreSQL runs as the `postgres` user,
        and switching users in a child forked from a helper thread crashes the child."""
        if not self.server.process.running:
            self.server = PostgresServer(self.server.data_dir, self.server.port, fsync=False)
            self.server.start()

    async def new_database(self) -> str:
        """A new database with every migration applied."""
        name = f"faults_{time.monotonic_ns()}"
        conn = await asyncpg.connect(self.server.dsn_for("postgres"))
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        url = self.server.url.rsplit("/", 1)[0] + f"/{name}"
        await run_migrations_async(url)
        return url


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    postgres = Postgres(tmp_path_factory.mktemp("faults-pg") / "data")
    yield postgres
    postgres.stop()


@contextmanager
def _mesh(
    tmp_path: Path,
    redis: RedisServer | RedisClusterServer,
    database_url: str,
    keys: DevKeys,
    replicas: dict[str, int] | None = None,
    **env: str,
) -> Iterator[Mesh]:
    settings = MeshSettings(
        run_dir=tmp_path / "mesh",
        keys_dir=keys.directory,
        replicas=replicas or {"location": 1},
        redis_url=redis.url,
        database_url=database_url,
        env={**ENV, **env},
    )
    with start_mesh(settings) as mesh:
        yield mesh


@asynccontextmanager
async def _apps(
    mesh: Mesh, keys: DevKeys, count: int
) -> AsyncIterator[tuple[list[DriverApp], location_grpc.LocationServiceAsyncStub]]:
    assert mesh.envoy is not None
    async with ops_channel(keys, mesh.envoy.address) as channel:
        stub = location_grpc.LocationServiceStub(channel)
        apps = []
        for n in range(count):
            driver_id = new_driver_id(f"fault{n}")
            me = bearer(token(keys, driver_id, Role.DRIVER))
            app = DriverApp(lambda: stub, driver_id, me)
            app.open()
            apps.append(app)
        yield apps, stub


async def _drive(
    apps: Sequence[DriverApp],
    upload: location_grpc.LocationServiceAsyncStub,
    *,
    until: Callable[[], bool] | None = None,
    seconds: float = 30.0,
) -> None:
    """Each app sends a fix every PERIOD_S (recovering a stream that ended) until `until()` holds,
    or for `seconds` when there is no condition; a condition not met in time fails."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        for app in apps:
            if app.stream_ended:
                await app.recover(upload)
            app.step()
            app.absorb()
        if until is not None and until():
            return
        await asyncio.sleep(PERIOD_S)
    assert until is None, "the condition was not met in time"


async def _finish(
    apps: Sequence[DriverApp], upload: location_grpc.LocationServiceAsyncStub
) -> None:
    """Closes every stream (each ends once its fixes are durable), then sends what is still
    unconfirmed (fixes refused in-band, or after a stream that ended on a lost fix)."""
    await asyncio.gather(*(app.close() for app in apps))
    for app in apps:
        await app.upload_unconfirmed(upload)


async def _assert_stored_exactly_once(database_url: str, apps: Sequence[DriverApp]) -> None:
    history = HistoryStore(create_engine(database_url))
    try:
        for app in apps:
            rows = await history.list_fixes(
                app.driver_id, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
            )
            assert sorted(row.seq for row in rows) == sorted(app.made), app.driver_id
    finally:
        await history.dispose()


def _all_durable_past(apps: Sequence[DriverApp], seq: int) -> Callable[[], bool]:
    return lambda: all(max(app.record.durable_seqs, default=0) > seq for app in apps)


def _assert_safe(message: str, names: str) -> None:
    assert names in message, message
    assert "retry" in message or "again" in message, message
    for leak in LEAKS:
        assert leak not in message, message


async def _assert_every_service_says(mesh: Mesh, keys: DevKeys, dependency: str) -> None:
    """RideService and GeoQueryService answer UNAVAILABLE naming the dependency that is away,
    through Envoy, like LocationService."""
    assert mesh.envoy is not None
    now = datetime.now(UTC)
    async with ops_channel(keys, mesh.envoy.address) as channel:
        rides = ride_grpc.RideServiceStub(channel)
        geo = geo_grpc.GeoQueryServiceStub(channel)
        calls: list[Any] = []
        if dependency == "PostgreSQL":
            track = gpb.GetDriverTrackRequest(driver_id="d-1")
            track.start_time.FromDatetime(now - timedelta(hours=1))
            track.end_time.FromDatetime(now)
            calls += [
                rides.GetRide(rpb.GetRideRequest(ride_id="r-missing"), timeout=30),
                geo.GetDriverTrack(track, timeout=30),
                geo.ListGeofences(gpb.ListGeofencesRequest(), timeout=30),
            ]
        else:
            near = gpb.SearchNearbyDriversRequest(radius_m=1000, max_results=5)
            near.center.latitude, near.center.longitude = 12.97, 77.59
            calls += [geo.SearchNearbyDrivers(near, timeout=30)]
        for call in calls:
            with pytest.raises(aio.AioRpcError) as got:
                await call
            assert got.value.code() == grpc.StatusCode.UNAVAILABLE, got.value
            _assert_safe(got.value.details() or "", dependency)


def _unavailable_rejections(apps: Sequence[DriverApp]) -> list[pb.LocationRejected]:
    code = grpc.StatusCode.UNAVAILABLE.value[0]
    return [r for app in apps for s in app.streams for r in s.rejected if r.code == code]


async def _end_of(call: Any, timeout: float = 30.0) -> aio.AioRpcError:
    """Reads a server stream until it fails; its error."""
    async with asyncio.timeout(timeout):
        try:
            while await call.read() is not aio.EOF:  # type: ignore[attr-defined]
                pass
        except aio.AioRpcError as error:
            return error
    raise AssertionError("the stream ended without an error")


def _a_location_replica(mesh: Mesh) -> ManagedProcess:
    return next(
        p for p in mesh.parts if isinstance(p, ManagedProcess) and p.name.startswith("location")
    )


def _kill(process: ManagedProcess) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.mark.parametrize("restart", ["empty", "aof"])
async def test_redis_killed_mid_stream_costs_drivers_a_few_in_band_refusals(
    restart: str,
    tmp_path: Path,
    make_database: Callable[[], str],
    keys: DevKeys,
) -> None:
    database_url = await asyncio.to_thread(make_database)
    redis = RedisServer(tmp_path / "redis", persist=restart == "aof").start()
    again: RedisServer | None = None
    try:
        with _mesh(tmp_path, redis, database_url, keys, EVERY_SERVICE) as mesh:
            async with _apps(mesh, keys, 3) as (apps, stub):
                await _drive(
                    apps, stub, until=lambda: all(a.record.durable_seqs[-1:] > [3] for a in apps)
                )
                watcher = stub.WatchDriver(pb.WatchDriverRequest(driver_id=apps[0].driver_id))
                await watcher.read()  # the watcher is subscribed and has the current fix

                await asyncio.to_thread(_kill, redis.process)
                killed_at = time.monotonic()
                await _drive(apps, stub, until=lambda: len(_unavailable_rejections(apps)) >= 3)
                with pytest.raises(aio.AioRpcError) as got:
                    await stub.GetDriverLocation(
                        pb.GetDriverLocationRequest(driver_id=apps[0].driver_id), timeout=10
                    )
                assert got.value.code() == grpc.StatusCode.UNAVAILABLE
                _assert_safe(got.value.details() or "", "Redis")
                ended = await _end_of(watcher)
                assert ended.code() == grpc.StatusCode.UNAVAILABLE
                _assert_safe(ended.details() or "", "Redis")
                await _assert_every_service_says(mesh, keys, "Redis")
                await _drive(apps, stub, seconds=REDIS_OUTAGE_S - (time.monotonic() - killed_at))

                again = await asyncio.to_thread(
                    RedisServer(tmp_path / "redis", redis.port, persist=restart == "aof").start
                )
                back_at = time.monotonic()
                made_before = {app.driver_id: len(app.made) for app in apps}

                def accepting_again() -> bool:
                    return all(
                        max(app.record.accepted_seqs, default=0) > made_before[app.driver_id]
                        for app in apps
                    )

                def durable_again() -> bool:
                    return all(
                        max(app.record.durable_seqs, default=0) > made_before[app.driver_id]
                        for app in apps
                    )

                await _drive(apps, stub, until=accepting_again)
                accepting_s = time.monotonic() - back_at
                await _drive(apps, stub, until=durable_again)
                durable_s = time.monotonic() - back_at
                await _finish(apps, stub)

        for rejection in _unavailable_rejections(apps):
            _assert_safe(rejection.message, "Redis")
        for app in apps:
            for record in app.streams[:-1]:
                # A stream ends early only because one of its fixes was lost with Redis's data,
                # and then it says what to send again. An app write racing that end is seen by
                # the gRPC client as INTERNAL from its own core, without the server's status (as
                # when the shutdown test wrote while the server ended its streams); the app
                # re-sends from its own buffer either way, which the store check below proves.
                if record.ended == grpc.StatusCode.INTERNAL:
                    assert record.ended_message == "Internal error from Core"
                    continue
                assert record.ended == grpc.StatusCode.UNAVAILABLE
                _assert_safe(record.ended_message, "lost before it was stored")
            last = app.streams[-1]
            assert last.ended == grpc.StatusCode.OK  # persistence healed: its fixes went durable
            assert last.durable_seqs[-1] == last.accepted_seqs[-1]
        # An empty restart loses only fixes the persister had not read at the kill.
        if restart == "aof":  # nothing was lost, so no stream had to end
            assert all(len(app.streams) == 1 for app in apps)
        await _assert_stored_exactly_once(database_url, apps)
        print(
            f"\nredis {restart}: refused in-band for {back_at - killed_at:.1f} s; "
            f"accepting {accepting_s:.2f} s and durable {durable_s:.2f} s after the restart"
        )
    finally:
        redis.stop()
        if again is not None:
            again.stop()


async def _delete_unread_entries(redis_url: str) -> list[int]:
    """Deletes the ingest entries no persister has read (Redis losing data, on purpose); returns
    the seqs of the fixes they held."""
    client = Redis.from_url(redis_url)
    try:
        groups = await client.xinfo_groups(ingest_stream(0))
        group = next(g for g in groups if g["name"] in (PERSIST_GROUP, PERSIST_GROUP.encode()))
        last = group["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else last
        unread: Any = await client.xrange(ingest_stream(0), min=f"({last}", max="+")
        assert unread, "the persister must have left entries unread"
        ids: list[Any] = [entry_id for entry_id, _ in unread]
        assert await client.xdel(ingest_stream(0), *ids) == len(ids)
        return [DriverLocation.FromString(fields[b"p"]).seq for _, fields in unread]
    finally:
        await client.aclose()


async def test_entries_redis_loses_are_never_acked_durable_and_the_app_sends_them_again(
    tmp_path: Path, own_postgres: Postgres, keys: DevKeys
) -> None:
    database_url = await own_postgres.new_database()
    redis = RedisServer(tmp_path / "redis").start()
    try:
        # Batches of 4: with PostgreSQL stopped the persister holds 4 fixes and reads no more.
        with _mesh(tmp_path, redis, database_url, keys, RIDEMESH_PERSIST_BATCH_SIZE="4") as mesh:
            async with _apps(mesh, keys, 1) as (apps, stub):
                app = apps[0]
                for _ in range(6):
                    app.step()
                await _drive(apps, stub, until=lambda: app.record.durable_seqs[-1:] >= [6])
                durable_before = max(app.record.durable_seqs)

                await asyncio.to_thread(own_postgres.stop)
                for _ in range(14):
                    app.step()
                await app.wait(lambda stream: stream.accepted_seq >= 20)
                deleted = await _delete_unread_entries(redis.url)
                own_postgres.start()  # on the loop's thread: see Postgres.start

                # New fixes are persisted, the watermark passes the deleted ones, and they are
                # found missing from PostgreSQL: the stream ends instead of acking them, and the
                # app sends what it holds again and streams on.
                await _drive(apps, stub, until=lambda: len(app.streams) > 1)
                first = app.streams[0]
                assert first.ended == grpc.StatusCode.UNAVAILABLE
                _assert_safe(first.ended_message, "lost before it was stored")
                assert max(first.durable_seqs) < min(deleted), "a lost fix was acked durable"
                assert max(first.durable_seqs) >= durable_before
                assert f"fix seq {min(deleted)} was accepted but lost" in first.ended_message
                assert f"durable_seq {max(first.durable_seqs)} again" in first.ended_message
                await _drive(apps, stub, seconds=0.5)
                await _finish(apps, stub)
        await _assert_stored_exactly_once(database_url, apps)
    finally:
        redis.stop()
        own_postgres.start()


async def test_postgresql_stopped_for_20_s_loses_nothing_and_catches_up(
    tmp_path: Path, own_postgres: Postgres, keys: DevKeys
) -> None:
    database_url = await own_postgres.new_database()
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with _mesh(tmp_path, redis, database_url, keys, EVERY_SERVICE) as mesh:
            async with _apps(mesh, keys, 3) as (apps, stub):
                await _drive(
                    apps, stub, until=lambda: all(a.record.durable_seqs[-1:] > [3] for a in apps)
                )
                await asyncio.to_thread(own_postgres.stop)
                stopped_at = time.monotonic()
                durable_at_stop = {a.driver_id: max(a.record.durable_seqs) for a in apps}
                with pytest.raises(aio.AioRpcError) as got:
                    await stub.UploadLocations(
                        pb.UploadLocationsRequest(updates=[apps[0].made[1]]),
                        metadata=apps[0]._me,
                        timeout=30,
                    )
                assert got.value.code() == grpc.StatusCode.UNAVAILABLE
                _assert_safe(got.value.details() or "", "PostgreSQL")
                await _assert_every_service_says(mesh, keys, "PostgreSQL")
                await _drive(apps, stub, seconds=PG_OUTAGE_S - (time.monotonic() - stopped_at))
                for app in apps:  # fixes kept flowing into the live state, none called durable
                    assert max(app.record.accepted_seqs) > durable_at_stop[app.driver_id] + 100
                    assert len(app.streams) == 1

                own_postgres.start()  # on the loop's thread: see Postgres.start
                back_at = time.monotonic()
                made = {a.driver_id: len(a.made) for a in apps}
                await _drive(
                    apps,
                    stub,
                    until=lambda: all(
                        max(a.record.durable_seqs) >= made[a.driver_id] for a in apps
                    ),
                )
                caught_up_s = time.monotonic() - back_at
                await _finish(apps, stub)
        for app in apps:
            assert len(app.streams) == 1
            assert app.streams[0].ended == grpc.StatusCode.OK
        await _assert_stored_exactly_once(database_url, apps)
        print(
            f"\npostgres stopped {PG_OUTAGE_S:.0f} s: caught up {caught_up_s:.2f} s after it "
            "came back"
        )
    finally:
        redis.stop()
        own_postgres.start()


async def test_a_killed_location_service_costs_its_drivers_a_reconnect_and_nothing_else(
    tmp_path: Path, make_database: Callable[[], str], keys: DevKeys
) -> None:
    database_url = await asyncio.to_thread(make_database)
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with _mesh(tmp_path, redis, database_url, keys, {"location": 2}) as mesh:
            async with _apps(mesh, keys, 6) as (apps, stub):
                await _drive(
                    apps, stub, until=lambda: all(a.record.durable_seqs[-1:] > [3] for a in apps)
                )
                victim = _a_location_replica(mesh)
                await asyncio.to_thread(_kill, victim)
                killed_at = time.monotonic()
                await _drive(apps, stub, until=lambda: any(len(a.streams) > 1 for a in apps))
                reconnected_s = time.monotonic() - killed_at
                await _drive(apps, stub, seconds=1.0)
                await _finish(apps, stub)
        moved = [a for a in apps if len(a.streams) > 1]
        assert moved, "some driver streamed through the killed replica"
        for app in moved:
            # Envoy resets a stream whose upstream died after answering (RST_STREAM
            # INTERNAL_ERROR), which gRPC clients report as INTERNAL: never UNKNOWN, never OK.
            assert app.streams[0].ended in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
        await _assert_stored_exactly_once(database_url, apps)
        print(f"\nlocation replica killed: its drivers streaming again after {reconnected_s:.2f} s")
    finally:
        redis.stop()


def _master_of(cluster: RedisClusterServer, driver_id: str) -> int:
    """The port of the master holding the driver's partition (the mesh runs twelve)."""
    names.use_partitions(CLUSTER_PARTITIONS)
    try:
        return cluster.master_port_for_slot(key_slot(names.driver_key(driver_id).encode()))
    finally:
        names.use_partitions(1)


async def test_a_redis_master_killed_mid_stream_fails_over_and_nothing_acked_durable_is_lost(
    tmp_path: Path, make_database: Callable[[], str], keys: DevKeys
) -> None:
    database_url = await asyncio.to_thread(make_database)
    cluster = RedisClusterServer(tmp_path / "cluster").start()
    try:
        with _mesh(tmp_path, cluster, database_url, keys, {"location": 2, "geo": 1}) as mesh:
            async with _apps(mesh, keys, 6) as (apps, stub):
                await _drive(apps, stub, until=_all_durable_past(apps, 5))
                master = _master_of(cluster, apps[0].driver_id)
                hit = [a for a in apps if _master_of(cluster, a.driver_id) == master]
                await asyncio.to_thread(cluster.kill, master)
                killed_at = time.monotonic()
                promoted = await asyncio.to_thread(cluster.wait_failover, master)
                failed_over_s = time.monotonic() - killed_at
                # Every driver's fixes become durable again, those on the promoted replica too.
                last = max(max(a.made) for a in apps)
                await _drive(apps, stub, until=_all_durable_past(apps, last + 5), seconds=60.0)
                await _finish(apps, stub)
        assert promoted != master
        assert hit, "the first driver's master held at least that driver"
        # Nothing the apps were told is durable is missing, and nothing is stored twice: a fix
        # the old master took and did not pass to its replica was never acked durable, and the
        # app sent it again.
        await _assert_stored_exactly_once(database_url, apps)
        refused = sum(len(s.rejected) for app in hit for s in app.streams)
        reopened = sum(len(app.streams) - 1 for app in apps)
        print(
            f"\nRedis master killed: replica promoted after {failed_over_s:.2f} s; "
            f"{len(hit)} of {len(apps)} drivers on it, {refused} fixes refused in-band, "
            f"{reopened} streams reopened"
        )
    finally:
        cluster.stop()


async def test_envoy_restarted_costs_every_driver_a_reconnect_and_nothing_else(
    tmp_path: Path, make_database: Callable[[], str], keys: DevKeys
) -> None:
    database_url = await asyncio.to_thread(make_database)
    redis = RedisServer(tmp_path / "redis").start()
    envoy2: EnvoyProxy | None = None
    try:
        with _mesh(tmp_path, redis, database_url, keys) as mesh:
            assert mesh.envoy is not None
            old = mesh.envoy
            async with _apps(mesh, keys, 3) as (apps, stub):
                await _drive(
                    apps, stub, until=lambda: all(a.record.durable_seqs[-1:] > [3] for a in apps)
                )
                await asyncio.to_thread(_kill, old.process)
                killed_at = time.monotonic()
                envoy2 = EnvoyProxy(
                    tmp_path / "envoy2",
                    old.config.upstreams,
                    port=old.port,
                    admin_port=old.admin_port,
                    jwt=old.config.jwt,
                )
                await asyncio.to_thread(envoy2.start)
                await _drive(
                    apps,
                    stub,
                    until=lambda: all(
                        len(a.streams) > 1 and a.record.durable_seqs[-1:] > [0] for a in apps
                    ),
                )
                healed_s = time.monotonic() - killed_at
                await _finish(apps, stub)
        for app in apps:
            assert app.streams[0].ended == grpc.StatusCode.UNAVAILABLE
        await _assert_stored_exactly_once(database_url, apps)
        print(f"\nenvoy restarted: every driver streaming and durable again after {healed_s:.2f} s")
    finally:
        if envoy2 is not None:
            envoy2.stop()
        redis.stop()


async def test_a_replica_stopped_while_postgresql_is_away_exits_within_its_grace(
    tmp_path: Path, own_postgres: Postgres, keys: DevKeys
) -> None:
    database_url = await own_postgres.new_database()
    redis = RedisServer(tmp_path / "redis").start()
    try:
        with _mesh(tmp_path, redis, database_url, keys, {"location": 2}) as mesh:
            async with _apps(mesh, keys, 4) as (apps, stub):
                await _drive(apps, stub, until=_all_durable_past(apps, 3))
                await asyncio.to_thread(own_postgres.stop)
                await _drive(apps, stub, seconds=1.0)  # fixes accepted, none can be stored
                replica = _a_location_replica(mesh)
                stopping_at = time.monotonic()
                os.kill(replica.pid, signal.SIGTERM)
                # The drain cannot commit anything: it gives up after the grace (2 s here)
                # and the process exits, leaving its entries pending for another persister.
                await asyncio.to_thread(replica.wait, 30)
                exited_s = time.monotonic() - stopping_at
                assert exited_s < 15, f"stopping took {exited_s:.1f} s"
                own_postgres.start()  # on the loop's thread: see Postgres.start
                made = max(len(a.made) for a in apps)
                await _drive(apps, stub, until=_all_durable_past(apps, made))
                await _finish(apps, stub)
        assert any(len(a.streams) > 1 for a in apps), "some driver was on the stopped replica"
        await _assert_stored_exactly_once(database_url, apps)
        print(f"\nreplica stopped with PostgreSQL away: exited after {exited_s:.1f} s")
    finally:
        redis.stop()
        own_postgres.start()
