"""Chat across two replicas (own Redis connections, hubs, engines) on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import LatLng
from services.domain.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.history.store import create_engine
from services.live.fanout import Hub
from services.ops.mesh.redis_server import RedisServer
from services.ride.chat import Publish, chat, redis_publisher
from services.ride.chat_store import ChatMessages
from services.ride.store import RideStore

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

REDIS_DB = 10
PICKUP = LatLng(latitude=52.520008, longitude=13.404954)
DROPOFF = LatLng(latitude=52.500000, longitude=13.300000)
WAIT_S = 10.0
# How long a test lets messages that must NOT arrive have their chance to.
SETTLE_S = 0.3


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Replica:
    """What one RideService process holds for chat: its own Redis client, hub and engine."""

    def __init__(self, redis_url: str, database_url: str) -> None:
        self.redis = Redis.from_url(redis_url)
        self.hub: Hub[pb.ChatMessage] = Hub(self.redis, pb.ChatMessage.FromString)
        engine = create_engine(database_url)
        self.store = RideStore(engine)
        self.messages = ChatMessages(engine)

    async def start(self) -> Replica:
        await self.hub.start()
        return self

    async def stop(self) -> None:
        await self.hub.stop()
        await self.store.dispose()
        await self.redis.aclose()


class Client:
    """One party's Chat stream on a replica: sends from a queue, collects what arrives."""

    def __init__(
        self,
        replica: Replica,
        join: pb.ChatJoin,
        *,
        first: pb.ChatRequest | None = None,
        resync_s: float = 15.0,
        publish: Publish | None = None,
    ) -> None:
        self._outbox: asyncio.Queue[pb.ChatRequest | None] = asyncio.Queue()
        self._first = first or pb.ChatRequest(join=join)
        self._arrived = asyncio.Condition()
        self.received: list[pb.ChatMessage] = []
        self._stream = chat(
            replica.store,
            replica.messages,
            replica.hub,
            publish or redis_publisher(replica.redis),
            self._requests(),
            resync_s=resync_s,
        )
        self._pump = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[pb.ChatRequest]:
        yield self._first
        while (request := await self._outbox.get()) is not None:
            yield request

    async def _read(self) -> None:
        async for response in self._stream:
            async with self._arrived:
                self.received.append(response.message)
                self._arrived.notify_all()

    def send(self, text: str, client_message_id: str = "") -> None:
        send = pb.ChatSend(text=text, client_message_id=client_message_id or uid("c"))
        self._outbox.put_nowait(pb.ChatRequest(send=send))

    def request(self, request: pb.ChatRequest) -> None:
        self._outbox.put_nowait(request)

    async def wait_for(self, count: int) -> list[pb.ChatMessage]:
        """Waits until `count` messages arrived; raises what ended the stream early."""

        async def enough() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.received) >= count)

        waiter = asyncio.ensure_future(enough())
        done, _ = await asyncio.wait(
            {waiter, self._pump}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            if self._pump in done:
                self._pump.result()  # raises the stream's error
            raise AssertionError(f"{len(self.received)} of {count} messages arrived")
        return self.received[:count]

    async def error(self) -> BaseException | None:
        """What ended the stream (waits for it to end)."""
        await asyncio.wait_for(asyncio.wait({self._pump}), WAIT_S)
        return self._pump.exception()

    async def close(self) -> None:
        # Cancelling the reader inside the stream runs the stream's cleanup, as a client's
        # cancellation does under grpc.
        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)


@pytest.fixture(scope="module")
async def replicas(
    redis_server: RedisServer, database_url: str
) -> AsyncIterator[tuple[Replica, Replica]]:
    url = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    flusher = Redis.from_url(url)
    await flusher.flushdb()
    await flusher.aclose()
    a, b = Replica(url, database_url), Replica(url, database_url)
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


@pytest.fixture
async def ride(replicas: tuple[Replica, Replica]) -> pb.Ride:
    """A ride with a driver assigned, so both parties may chat."""
    store = replicas[0].store
    ride, _ = await store.create(uid("rider"), PICKUP, DROPOFF, uid("req"))
    driver = uid("driver")
    await store.set_candidates(ride.ride_id, [driver], datetime.now(UTC) + timedelta(minutes=5))
    await store.offer_next(ride.ride_id, datetime.now(UTC), 30.0)
    return await store.accept(ride.ride_id, driver)


def rider_join(ride: pb.Ride, after: int = 0) -> pb.ChatJoin:
    return pb.ChatJoin(
        ride_id=ride.ride_id, party=pb.PARTY_RIDER, participant_id=ride.rider_id,
        after_sequence=after,
    )  # fmt: skip


def driver_join(ride: pb.Ride, after: int = 0) -> pb.ChatJoin:
    return pb.ChatJoin(
        ride_id=ride.ride_id, party=pb.PARTY_DRIVER, participant_id=ride.driver_id,
        after_sequence=after,
    )  # fmt: skip


def sequences(messages: list[pb.ChatMessage]) -> list[int]:
    return [m.sequence for m in messages]


async def test_both_sides_on_two_replicas_get_all_messages_in_order(
    replicas: tuple[Replica, Replica], ride: pb.Ride
) -> None:
    a, b = replicas
    rider, driver = Client(a, rider_join(ride)), Client(b, driver_join(ride))
    for i in range(50):  # both sides send all at once: stores and publishes race
        rider.send(f"rider {i}")
        driver.send(f"driver {i}")
    seen_by_rider, seen_by_driver = await asyncio.gather(rider.wait_for(100), driver.wait_for(100))
    assert sequences(seen_by_rider) == list(range(1, 101))
    assert seen_by_rider == seen_by_driver
    # Each party's own messages keep the order they were sent in.
    for party, name in ((pb.PARTY_RIDER, "rider"), (pb.PARTY_DRIVER, "driver")):
        texts = [m.text for m in seen_by_rider if m.sender == party]
        assert texts == [f"{name} {i}" for i in range(50)]
    stored = await a.messages.chat_messages_after(ride.ride_id, 0, 500)
    assert stored == seen_by_rider
    await asyncio.sleep(SETTLE_S)
    assert len(rider.received) == len(driver.received) == 100  # and nothing twice
    await rider.close()
    await driver.close()


async def test_a_party_that_reconnects_gets_exactly_what_it_missed(
    replicas: tuple[Replica, Replica], ride: pb.Ride
) -> None:
    a, b = replicas
    driver = Client(b, driver_join(ride))
    rider = Client(a, rider_join(ride))
    for i in range(10):
        driver.send(f"before {i}")
    assert sequences(await rider.wait_for(10)) == list(range(1, 11))
    await rider.close()

    for i in range(10):
        driver.send(f"while away {i}")
    await driver.wait_for(20)
    back = Client(b, rider_join(ride, after=10))  # on the other replica this time
    assert sequences(await back.wait_for(10)) == list(range(11, 21))
    assert [m.text for m in back.received] == [f"while away {i}" for i in range(10)]
    for i in range(5):
        driver.send(f"after {i}")
    assert sequences(await back.wait_for(15)) == list(range(11, 26))
    await asyncio.sleep(SETTLE_S)
    assert len(back.received) == 15
    await back.close()
    await driver.close()


async def test_a_reconnect_while_the_other_side_keeps_sending_loses_and_repeats_nothing(
    replicas: tuple[Replica, Replica], ride: pb.Ride
) -> None:
    a, b = replicas
    driver = Client(a, driver_join(ride))
    first = Client(b, rider_join(ride))
    for i in range(60):
        driver.send(f"m{i}")
    await first.wait_for(15)
    await first.close()  # drops mid-flow, whatever it had seen by now
    last_seen = first.received[-1].sequence
    second = Client(a, rider_join(ride, after=last_seen))
    await second.wait_for(60 - last_seen)
    assert sequences(first.received + second.received) == list(range(1, 61))
    await second.close()
    await driver.close()


async def test_a_message_published_late_by_another_replica_is_delivered_in_order(
    replicas: tuple[Replica, Replica], ride: pb.Ride
) -> None:
    a, b = replicas
    rider = Client(a, rider_join(ride))
    driver = Client(b, driver_join(ride))
    await asyncio.sleep(SETTLE_S)  # both joined and subscribed
    # Replica B stores message 1 but its publish is still in flight when message 2 is published.
    late = await b.messages.add_chat_message(
        ride.ride_id, pb.PARTY_DRIVER, ride.driver_id, "slow publish", "late-1"
    )
    driver.send("fast publish")
    assert [m.text for m in await rider.wait_for(2)] == ["slow publish", "fast publish"]
    await redis_publisher(b.redis)(late)  # the late publish lands after all
    assert sequences(await driver.wait_for(2)) == [1, 2]
    await asyncio.sleep(SETTLE_S)
    assert sequences(rider.received) == sequences(driver.received) == [1, 2]
    await rider.close()
    await driver.close()


async def test_a_message_whose_publish_was_lost_arrives_on_the_next_resync(
    replicas: tuple[Replica, Replica], ride: pb.Ride
) -> None:
    a, b = replicas
    rider = Client(a, rider_join(ride), resync_s=0.2)
    await asyncio.sleep(SETTLE_S)
    await b.messages.add_chat_message(ride.ride_id, pb.PARTY_DRIVER, ride.driver_id, "lost", "l1")
    assert [m.text for m in await rider.wait_for(1)] == ["lost"]
    await rider.close()


async def test_the_sender_sees_its_own_message_even_when_its_publish_is_lost(
    replicas: tuple[Replica, Replica], ride: pb.Ride
) -> None:
    a, b = replicas

    async def lost(message: pb.ChatMessage) -> None:
        return None

    rider = Client(b, rider_join(ride))
    driver = Client(a, driver_join(ride), publish=lost)
    driver.send("one")
    driver.send("two")
    assert [m.text for m in await driver.wait_for(2)] == ["one", "two"]
    rider.send("three")  # its publish reaches the driver, whose gap fill brings 1 and 2 too
    assert [m.text for m in await rider.wait_for(3)] == ["one", "two", "three"]
    assert sequences(await driver.wait_for(3)) == [1, 2, 3]
    await rider.close()
    await driver.close()


async def test_a_resent_client_message_id_is_stored_once(
    replicas: tuple[Replica, Replica], ride: pb.Ride
) -> None:
    a, b = replicas
    phone, tablet = Client(a, rider_join(ride)), Client(b, rider_join(ride))
    phone.send("hello", "same-id")
    tablet.send("hello", "same-id")  # the same rider's resend from another device
    phone.send("hello", "same-id")
    phone.send("next", "other-id")
    received = await phone.wait_for(2)
    assert [(m.sequence, m.text) for m in received] == [(1, "hello"), (2, "next")]
    await asyncio.sleep(SETTLE_S)
    assert len(phone.received) == 2
    stored = await a.messages.chat_messages_after(ride.ride_id, 0, 10)
    assert [m.client_message_id for m in stored] == ["same-id", "other-id"]
    await phone.close()
    await tablet.close()


@pytest.mark.parametrize(
    ("party", "who"),
    [
        (pb.PARTY_RIDER, "stranger"),
        (pb.PARTY_DRIVER, "stranger"),
        (pb.PARTY_DRIVER, "rider"),  # the rider's id claiming to be the driver
    ],
)
async def test_anyone_but_the_rider_and_driver_is_denied(
    replicas: tuple[Replica, Replica], ride: pb.Ride, party: pb.Party.ValueType, who: str
) -> None:
    participant = ride.rider_id if who == "rider" else uid("stranger")
    join = pb.ChatJoin(ride_id=ride.ride_id, party=party, participant_id=participant)
    client = Client(replicas[0], join)
    assert isinstance(await client.error(), PermissionDenied)
    await client.close()


async def test_the_driver_of_a_ride_still_waiting_for_one_is_nobody(
    replicas: tuple[Replica, Replica],
) -> None:
    store = replicas[0].store
    waiting, _ = await store.create(uid("rider"), PICKUP, DROPOFF, uid("req"))
    join = pb.ChatJoin(ride_id=waiting.ride_id, party=pb.PARTY_DRIVER, participant_id="d-any")
    client = Client(replicas[0], join)
    assert isinstance(await client.error(), PermissionDenied)
    await client.close()


async def test_an_unknown_ride_is_not_found(replicas: tuple[Replica, Replica]) -> None:
    join = pb.ChatJoin(ride_id="r-nope", party=pb.PARTY_RIDER, participant_id="u1")
    client = Client(replicas[0], join)
    error = await client.error()
    assert isinstance(error, NotFound)
    assert "r-nope" in str(error)
    await client.close()


async def test_a_join_without_a_ride_id_is_invalid(replicas: tuple[Replica, Replica]) -> None:
    join = pb.ChatJoin(party=pb.PARTY_RIDER, participant_id="u1")
    client = Client(replicas[0], join)
    error = await client.error()
    assert isinstance(error, InvalidArgument)
    assert "join.ride_id is required" in str(error)
    await client.close()


async def test_the_first_message_must_be_join(
    replicas: tuple[Replica, Replica], ride: pb.Ride
) -> None:
    send_first = pb.ChatRequest(send=pb.ChatSend(text="hi", client_message_id="c1"))
    client = Client(replicas[0], rider_join(ride), first=send_first)
    error = await client.error()
    assert isinstance(error, InvalidArgument)
    assert "join" in str(error)
    await client.close()
    assert await replicas[0].messages.chat_messages_after(ride.ride_id, 0, 10) == []


async def test_a_second_join_ends_the_stream(
    replicas: tuple[Replica, Replica], ride: pb.Ride
) -> None:
    client = Client(replicas[0], rider_join(ride))
    client.request(pb.ChatRequest(join=rider_join(ride)))
    assert isinstance(await client.error(), InvalidArgument)
    await client.close()


@pytest.mark.parametrize(
    ("text", "client_message_id"),
    [("", "c1"), ("x" * 2001, "c1"), ("hi", ""), ("hi", "c" * 129)],
)
async def test_a_bad_send_is_invalid_and_stores_nothing(
    replicas: tuple[Replica, Replica], ride: pb.Ride, text: str, client_message_id: str
) -> None:
    client = Client(replicas[0], rider_join(ride))
    client.request(pb.ChatRequest(send=pb.ChatSend(text=text, client_message_id=client_message_id)))
    assert isinstance(await client.error(), InvalidArgument)
    await client.close()
    assert await replicas[0].messages.chat_messages_after(ride.ride_id, 0, 10) == []


async def test_an_ended_ride_takes_no_more_messages_but_its_history_can_be_read(
    replicas: tuple[Replica, Replica], ride: pb.Ride
) -> None:
    a, _ = replicas
    rider = Client(a, rider_join(ride))
    rider.send("on my way")
    await rider.wait_for(1)
    await rider.close()
    await a.store.cancel(ride.ride_id, pb.PARTY_RIDER, ride.rider_id, "found another way")

    reader = Client(a, rider_join(ride))
    assert [m.text for m in await reader.wait_for(1)] == ["on my way"]
    reader.send("still there?")
    error = await reader.error()
    assert isinstance(error, FailedPrecondition)
    assert "CANCELLED" in str(error)
    await reader.close()
    assert len(await a.messages.chat_messages_after(ride.ride_id, 0, 10)) == 1


async def test_a_stream_leaves_no_subscription_behind(
    replicas: tuple[Replica, Replica], ride: pb.Ride
) -> None:
    a, _ = replicas
    before = a.hub.subscribed_channels()
    client = Client(a, rider_join(ride))
    client.send("hi")
    await client.wait_for(1)
    assert a.hub.subscribed_channels() == before + 1
    await client.close()
    assert a.hub.subscribed_channels() == before
