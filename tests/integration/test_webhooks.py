"""Webhook delivery against a real Redis event log, a real PostgreSQL and a real HTTP receiver on
127.0.0.1: outages, signatures, dead letters and replays, two deliverers, deletion, the RPCs."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc import aio
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as pb_grpc
from services.auth.identity import Identity, Role
from services.geo.webhook_delivery import (
    Deliverer,
    DeliveryTimings,
    health,
    start_cursors,
)
from services.geo.webhook_store import WebhookStore
from services.geo.webhooks import StoredWebhook, parse_webhook
from services.history.store import create_engine, raw_connection
from services.live.events import LOG_EVENT_LUA, RETENTION_S, EventLog, log_args
from services.live.names import events_meta_key, events_stream, webhook_lease_key
from services.live.replies import text
from services.ops.mesh.redis_server import RedisServer
from tests.integration.geo_servicer import geo_stub
from tests.integration.restartable import Restartable
from tests.waiting import until
from tests.webhook_receiver import Received, Receiver
from tests.webhook_receiver import verifies as verify

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

REDIS_DB = 2
SECRET = "test-secret"
# Short everything: a lost lease expires in 1.5 s, backoff waits at most 0.2 s.
FAST = DeliveryTimings(
    lease_ms=1500,
    poll_s=0.1,
    read_every_s=0.02,
    timeout_s=1.0,
    retry_s=0.1,
    backoff_base_s=0.02,
    backoff_cap_s=0.2,
)
ZONE = {"id": "z-1", "n": "Airport", "l": {"kind": "airport"}}


# --- a real HTTP receiver ----------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    await found.accept()
    yield found
    await found.refuse()


# --- Redis, PostgreSQL, deliverers -------------------------------------------------------------


@pytest.fixture(scope="module")
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}")
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    found = create_engine(database_url)
    yield found
    await found.dispose()


@pytest.fixture
async def store(engine: AsyncEngine) -> WebhookStore:
    # Every deliverer delivers every subscription in the database: each test starts from none.
    async with raw_connection(engine) as apg, apg.transaction():
        # A lock left held would show here as an error, not as a test that hangs.
        await apg.execute("SET LOCAL lock_timeout = '10s'")
        await apg.execute("TRUNCATE webhooks CASCADE")
    return WebhookStore(engine)


Start = Callable[..., Awaitable[Deliverer]]


@pytest.fixture
async def deliverers(store: WebhookStore, redis_server: RedisServer) -> AsyncIterator[Start]:
    """start() -> a started Deliverer with its own Redis client (as a replica has)."""
    started: list[tuple[Deliverer, Redis]] = []

    async def start(timings: DeliveryTimings = FAST) -> Deliverer:
        client = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}")
        deliverer = Deliverer(store, client, timings)
        await deliverer.start()
        started.append((deliverer, client))
        return deliverer

    yield start
    for deliverer, client in started:
        await deliverer.stop()
        await client.aclose()


async def subscribe(store: WebhookStore, redis: Redis, url: str, **fields: Any) -> StoredWebhook:
    """Creates a subscription as CreateWebhook does: from the log's end on."""
    spec = parse_webhook(pb.Webhook(url=url, **fields))
    return await store.create(spec, SECRET, await start_cursors(EventLog(redis)))


# Logs one event with the log's own writer (epoch, ordinal, retention), as the apply scripts do;
# returns its stream id.
_APPEND_LUA = (
    LOG_EVENT_LUA
    + """
log_event(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
"""
)


async def append(redis: Redis, driver_id: str, kind: str = "geofence.enter", t_ms: int = 0) -> str:
    """Logs one event; its event id."""
    fix = {"d": driver_id, "t": t_ms or 1_764_331_200_000, "lat": 52.5, "lng": 13.4}
    subject = ZONE if kind.startswith("geofence.") else {"id": f"ride-of-{driver_id}"}
    entry_id = await redis.eval(
        _APPEND_LUA,
        2,
        events_stream(0),
        events_meta_key(0),
        *log_args(RETENTION_S),
        kind,
        json.dumps(fix),
        json.dumps(subject),
        "",
    )
    return f"0:{text(entry_id)}"


def verifies(request: Received, secret: str = SECRET) -> bool:
    return verify(request, secret)


def in_driver_order(keys: list[str], appended: dict[str, list[str]]) -> Iterator[bool]:
    for driver_keys in appended.values():
        yield [k for k in keys if k in driver_keys] == driver_keys


# --- tests -------------------------------------------------------------------------------------


async def test_every_event_arrives_once_and_in_order_after_the_receiver_was_down(
    store: WebhookStore, redis: Redis, receiver: Receiver, deliverers: Start
) -> None:
    before = await append(redis, "d-0")  # logged before the subscription: not sent
    hook = await subscribe(store, redis, receiver.url("/a"))
    await deliverers()
    appended: dict[str, list[str]] = {"d-1": [], "d-2": []}
    for i in range(4):
        for driver in appended:
            appended[driver].append(await append(redis, driver, t_ms=1_764_331_200_000 + i))
    await until(lambda: len(receiver.accepted("/a")) == 8, timeout=10)

    await receiver.refuse()  # connections refused for a while
    for _ in range(6):
        for driver in appended:
            appended[driver].append(await append(redis, driver))

    async def retried() -> bool:
        stored = await store.get(hook.webhook_id)
        return stored is not None and stored.counters.retried >= 3

    await until_async(retried, timeout=10)
    await receiver.accept()
    await until(lambda: len(receiver.accepted("/a")) == 20, timeout=15)

    keys = receiver.accepted("/a")
    assert sorted(Counter(keys).values()) == [1] * 20  # once each by idempotency key
    assert before not in keys
    assert set(keys) == {k for driver_keys in appended.values() for k in driver_keys}
    assert all(in_driver_order(keys, appended))
    assert all(verifies(r) for r in receiver.requests)
    first = receiver.requests[0]
    assert first.headers["content-type"] == "application/json"
    assert first.headers["ridemesh-event"] == "geofence.enter"
    assert json.loads(first.body)["id"] == first.key
    assert not verifies(first, "another secret")

    # The receiver answers before the deliverer records it: wait for the record.
    await until_async(delivered(store, hook, 20), timeout=5)
    stored = await store.get(hook.webhook_id)
    assert stored is not None
    assert stored.counters.retried >= 3
    assert stored.counters.last_error == ""  # cleared by the next success
    assert stored.counters.last_delivery_time is not None


async def test_an_event_past_its_retry_time_is_dead_lettered_and_a_replay_delivers_it(
    store: WebhookStore, redis: Redis, receiver: Receiver, deliverers: Start
) -> None:
    hook = await subscribe(store, redis, receiver.url("/dl"), max_retry=Duration(seconds=1))
    poison = await append(redis, "d-1")
    receiver.failing_keys.add(poison)
    counted = {outcome: _deliveries(outcome) for outcome in ("delivered", "dead_lettered")}
    first = await deliverers()
    later = [await append(redis, "d-1"), await append(redis, "d-2", kind="ride.at_pickup")]
    # The later events wait behind the failing one, then flow once it is given up.
    await until(lambda: receiver.accepted("/dl") == later, timeout=10)
    await until_async(delivered(store, hook, 2), timeout=5)
    letters = await store.dead_letters(hook.webhook_id, 10)
    assert [letter.event_id for letter in letters] == [poison]
    failed = [r for r in receiver.requests if r.key == poison]
    assert letters[0].attempts == len(failed) >= 2
    assert letters[0].last_error == "the receiver answered HTTP 503"
    assert letters[0].payload_json.encode() == failed[0].body
    stored = await store.get(hook.webhook_id)
    assert stored is not None
    assert (stored.counters.dead_lettered, stored.counters.delivered) == (1, 2)
    # Counted once the store has it recorded (so shortly after the rows show it).
    await until(lambda: _deliveries("delivered") == counted["delivered"] + 2, timeout=5)
    assert _deliveries("dead_lettered") == counted["dead_lettered"] + 1

    receiver.failing_keys.clear()
    await first.stop()  # so the replay and the new event are both waiting when one starts
    assert await store.request_replay(hook.webhook_id, []) == 1
    newer = await append(redis, "d-1")
    await deliverers()
    await until(lambda: len(receiver.accepted("/dl")) == 4, timeout=10)
    # The replay goes before the new event, with the same key and body, signed.
    assert receiver.accepted("/dl")[2:] == [poison, newer]
    await until_async(delivered(store, hook, 4), timeout=5)
    replayed = next(r for r in receiver.requests if r.key == poison and r.status == 200)
    assert replayed.body == failed[0].body
    assert replayed.headers["ridemesh-event"] == "geofence.enter"
    assert verifies(replayed)
    assert await store.dead_letters(hook.webhook_id, 10) == []


async def test_two_deliverers_never_send_one_event_at_the_same_time(
    store: WebhookStore, redis: Redis, receiver: Receiver, deliverers: Start
) -> None:
    receiver.delay_s = 0.01  # each request in flight a while, so overlaps would be seen
    hooks = [await subscribe(store, redis, receiver.url(f"/two/{i}")) for i in range(3)]
    first, _second = await deliverers(), await deliverers()
    keys = [await append(redis, f"d-{i % 4}") for i in range(15)]
    for i, hook in enumerate(hooks):
        await until(_got(receiver, f"/two/{i}", 15), timeout=10)
        await until_async(delivered(store, hook, 15), timeout=5)  # nothing in flight

    await first.stop()  # its leases go to the other deliverer
    keys += [await append(redis, f"d-{i % 4}") for i in range(15)]
    for i in range(3):
        await until(_got(receiver, f"/two/{i}", 30), timeout=15)

    assert receiver.overlaps == []
    for hook in hooks:
        await until_async(delivered(store, hook, 30), timeout=5)
    # A handover with nothing in flight sends nothing twice.
    assert all(len(receiver.accepted(f"/two/{i}")) == 30 for i in range(3))


async def test_deleting_a_subscription_stops_its_delivery(
    store: WebhookStore, redis: Redis, receiver: Receiver, deliverers: Start
) -> None:
    doomed = await subscribe(store, redis, receiver.url("/doomed"))
    await deliverers()
    await append(redis, "d-1")
    await until(lambda: len(receiver.accepted("/doomed")) == 1, timeout=10)
    assert await redis.exists(webhook_lease_key(0, doomed.webhook_id))

    assert await store.delete(doomed.webhook_id)
    assert not await store.delete(doomed.webhook_id)

    async def released() -> bool:
        return not await redis.exists(webhook_lease_key(0, doomed.webhook_id))

    await until_async(released, timeout=5)
    control = await subscribe(store, redis, receiver.url("/control"))
    sent = [await append(redis, "d-1") for _ in range(3)]
    await until(lambda: receiver.accepted("/control") == sent, timeout=10)
    assert len(receiver.accepted("/doomed")) == 1
    assert await store.cursors(doomed.webhook_id) == {}
    assert control.webhook_id != doomed.webhook_id


async def test_a_cursor_the_log_no_longer_covers_jumps_to_the_oldest_event_kept(
    store: WebhookStore, redis: Redis, receiver: Receiver, deliverers: Start
) -> None:
    hook = await subscribe(store, redis, receiver.url("/gap"))
    lost = [await append(redis, "d-1") for _ in range(3)]
    kept = [await append(redis, "d-1") for _ in range(2)]
    # Retention trims the first three before any deliverer ran (as the writer does and counts).
    trimmed = await redis.xtrim(events_stream(0), minid=kept[0].split(":", 1)[1], approximate=False)
    assert trimmed >= 3  # with the earlier tests' events
    await redis.hincrby(events_meta_key(0), "x", trimmed)
    resets = _resets()
    await deliverers()
    await until(lambda: receiver.accepted("/gap") == kept, timeout=10)
    assert not set(lost) & set(receiver.accepted("/gap"))
    assert _resets() == resets + 1

    async def past_kept() -> bool:
        return (await store.cursors(hook.webhook_id))[0].offset == _offset(kept[-1])

    await until_async(past_kept, timeout=5)


async def test_a_deliverer_outlives_redis_going_away_and_goes_on(
    store: WebhookStore, receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = Restartable(tmp_path / "redis")
    client = Redis.from_url(own.server.url)
    deliverer = Deliverer(store, client, FAST)
    try:
        await subscribe(store, client, receiver.url("/away"))
        await deliverer.start()
        before = await append(client, "d-1")
        await until(lambda: receiver.accepted("/away") == [before], timeout=10)

        own.kill()
        await until(lambda: "the live store (Redis) is away" in caplog.text, timeout=10)
        own.start()  # empty: the log starts again
        after = await _append_when_back(client, "d-1")
        await until(lambda: receiver.accepted("/away") == [before, after], timeout=10)
    finally:
        await deliverer.stop()
        await client.aclose()
        own.server.stop()


async def _append_when_back(client: Redis, driver_id: str) -> str:
    """append() once the client has reconnected to a restarted Redis."""
    async with asyncio.timeout(10):
        while True:
            try:
                return await append(client, driver_id)
            except (RedisError, OSError):
                await asyncio.sleep(0.05)


# --- the RPCs, through a real server -----------------------------------------------------------


def _verify(header: str | None) -> Identity:
    return (
        Identity("ops-1", Role.OPS) if header and "ops" in header else Identity("r-1", Role.RIDER)
    )


@pytest.fixture
async def stub(
    store: WebhookStore, redis: Redis
) -> AsyncIterator[pb_grpc.GeoQueryServiceAsyncStub]:
    # Only the webhook RPCs are called: the servicer's other parts are left out.
    async with geo_stub(_verify, redis=redis, webhook_store=store) as stub:
        yield stub


OPS = (("authorization", "Bearer ops"),)
RIDER = (("authorization", "Bearer rider"),)


async def test_the_webhook_rpcs(
    stub: pb_grpc.GeoQueryServiceAsyncStub,
    store: WebhookStore,
    redis: Redis,
    receiver: Receiver,
    deliverers: Start,
) -> None:
    webhook = pb.Webhook(url=receiver.url("/rpc"), event_kinds=["geofence.exit"])
    created = (
        await stub.CreateWebhook(pb.CreateWebhookRequest(webhook=webhook), metadata=OPS)
    ).webhook
    assert created.webhook_id
    assert len(created.secret) >= 40
    assert created.max_retry.seconds == 3600

    await deliverers()
    await append(redis, "d-1", kind="geofence.enter")  # not a kind it wants
    exit_id = await append(redis, "d-1", kind="geofence.exit")
    await until(lambda: receiver.accepted("/rpc") == [exit_id], timeout=10)
    assert verifies(receiver.requests[-1], created.secret)
    await until_async(delivered(store, created, 1), timeout=5)

    listed = (await stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=OPS)).webhooks
    assert [w.webhook_id for w in listed] == [created.webhook_id]
    assert listed[0].secret == ""
    assert listed[0].health.delivered == 1
    assert listed[0].health.backlog == 0
    letters = await stub.ListWebhookDeadLetters(
        pb.ListWebhookDeadLettersRequest(webhook_id=created.webhook_id), metadata=OPS
    )
    assert list(letters.dead_letters) == []
    replayed = await stub.ReplayWebhookDeadLetters(
        pb.ReplayWebhookDeadLettersRequest(webhook_id=created.webhook_id), metadata=OPS
    )
    assert replayed.replayed == 0

    await stub.DeleteWebhook(pb.DeleteWebhookRequest(webhook_id=created.webhook_id), metadata=OPS)
    for call in (
        stub.DeleteWebhook(pb.DeleteWebhookRequest(webhook_id=created.webhook_id), metadata=OPS),
        stub.ListWebhookDeadLetters(
            pb.ListWebhookDeadLettersRequest(webhook_id=created.webhook_id), metadata=OPS
        ),
    ):
        with pytest.raises(aio.AioRpcError) as missing:
            await call
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(aio.AioRpcError) as invalid:
        await stub.CreateWebhook(
            pb.CreateWebhookRequest(webhook=pb.Webhook(url="ftp://x")), metadata=OPS
        )
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "webhook.url" in (invalid.value.details() or "")
    with pytest.raises(aio.AioRpcError) as denied:
        await stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=RIDER)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_backlog_counts_what_is_owed(
    store: WebhookStore, redis: Redis, receiver: Receiver
) -> None:
    hook = await subscribe(store, redis, receiver.url("/owed"), event_kinds=["ride.at_pickup"])
    await append(redis, "d-1")  # a zone event: not wanted, not owed
    await append(redis, "d-1", kind="ride.at_pickup")
    await append(redis, "d-2", kind="ride.at_pickup")
    [(stored, backlog)] = await health(store, EventLog(redis))  # no deliverer runs
    assert stored.webhook_id == hook.webhook_id
    assert backlog.events == 2
    assert 0.0 <= backlog.lag_s < 10.0


# --- helpers -----------------------------------------------------------------------------------


async def until_async(condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """tests.waiting.until for a condition that has to ask a server."""
    async with asyncio.timeout(timeout):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.02)


def _offset(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split(":", 1)[1].split("-")
    return int(ms), int(seq)


def delivered(
    store: WebhookStore, hook: StoredWebhook | pb.Webhook, count: int
) -> Callable[[], Awaitable[bool]]:
    """Whether the store counted `count` deliveries of the subscription."""

    async def check() -> bool:
        stored = await store.get(hook.webhook_id)
        return stored is not None and stored.counters.delivered == count

    return check


def _got(receiver: Receiver, path: str, count: int) -> Callable[[], bool]:
    """Whether `count` distinct events were accepted on `path`."""
    return lambda: len(set(receiver.accepted(path))) >= count


def _deliveries(outcome: str) -> float:
    sample = REGISTRY.get_sample_value("ridemesh_webhook_deliveries_total", {"outcome": outcome})
    return sample or 0.0


def _resets() -> float:
    return REGISTRY.get_sample_value("ridemesh_webhook_cursor_resets_total") or 0.0
