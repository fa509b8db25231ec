"""Chat: a ride's rider and driver exchange stored messages, delivered in sequence order."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from redis.asyncio import Redis

from ridemesh.v1 import ride_service_pb2 as pb
from services.domain.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.domain.parties import Participant
from services.domain.validation import validate_id
from services.live.fanout import Hub
from services.live.names import chat_channel
from services.ride.states import TERMINAL, state_name

Party = pb.Party

MAX_TEXT_CHARS = 2000
MAX_CLIENT_MESSAGE_ID_CHARS = 128
# Messages read from the store per query when replaying or filling a gap.
FILL_PAGE = 200
# Live messages a slow reader may fall behind by; beyond it the oldest are dropped from the
# mailbox and come back from the store as a gap fill, so nothing is lost either way.
INBOX_DEPTH = 64
# A live message lost by pub/sub (a Redis reconnect) would otherwise wait for the next one.
RESYNC_S = 15.0


# Turns a join into the caller's identity, raising when the join cannot be trusted.
Identify = Callable[[pb.ChatJoin], Participant]
Publish = Callable[[pb.ChatMessage], Awaitable[None]]


class RideReader(Protocol):
    """The part of the ride store the chat uses (services.ride.store.RideStore)."""

    async def get(self, ride_id: str) -> pb.Ride | None: ...


class ChatLog(Protocol):
    """Where messages are kept (services.ride.chat_store.ChatMessages)."""

    async def add_chat_message(
        self,
        ride_id: str,
        sender: pb.Party.ValueType,
        sender_id: str,
        text: str,
        client_message_id: str,
    ) -> pb.ChatMessage: ...

    async def chat_messages_after(
        self, ride_id: str, after_sequence: int, limit: int
    ) -> list[pb.ChatMessage]: ...


def redis_publisher(redis: Redis) -> Publish:
    """Publishes stored messages on their ride's chat channel, for every replica's streams."""

    async def publish(message: pb.ChatMessage) -> None:
        await redis.spublish(chat_channel(message.ride_id), message.SerializeToString())

    return publish


def claimed_participant(join: pb.ChatJoin) -> Participant:
    """The identity the join states, trusted as-is: for tests of the chat alone; the servicer
    identifies callers by their token instead."""
    if join.party not in (Party.PARTY_RIDER, Party.PARTY_DRIVER):
        raise InvalidArgument("join.party must be PARTY_RIDER or PARTY_DRIVER")
    if not join.participant_id:
        raise InvalidArgument("join.participant_id is required")
    return Participant(join.party, validate_id(join.participant_id, "join.participant_id"))


def authorize(ride: pb.Ride, who: Participant) -> None:
    """Only the ride's rider and its assigned driver may chat in it."""
    if who.party == Party.PARTY_RIDER and who.participant_id == ride.rider_id:
        return
    if who.party == Party.PARTY_DRIVER and ride.driver_id and who.participant_id == ride.driver_id:
        return
    raise PermissionDenied(
        f"{Party.Name(who.party)} {who.participant_id!r} is not the rider or the assigned driver "
        f"of ride {ride.ride_id!r}"
    )


def validate_send(send: pb.ChatSend) -> None:
    if not 1 <= len(send.text) <= MAX_TEXT_CHARS:
        raise InvalidArgument(
            f"send.text must be 1 to {MAX_TEXT_CHARS} characters, got {len(send.text)}"
        )
    if not 1 <= len(send.client_message_id) <= MAX_CLIENT_MESSAGE_ID_CHARS:
        raise InvalidArgument(
            f"send.client_message_id is required and at most {MAX_CLIENT_MESSAGE_ID_CHARS} "
            f"characters, got {len(send.client_message_id)}"
        )


def check_open(ride: pb.Ride) -> None:
    if ride.state in TERMINAL:
        raise FailedPrecondition(
            f"ride {ride.ride_id!r} is {state_name(ride.state)}; its chat is closed"
        )


class Step(enum.Enum):
    """What a delivering stream does next."""

    DELIVER = "deliver"  # the live message is the next in sequence
    SKIP = "skip"  # already delivered (it came from the store, or from two publishes)
    FILL = "fill"  # read the store after the last delivered: a gap, or quiet for a while


def next_step(last: int, live: pb.ChatMessage | None) -> Step:
    """Decides from the last delivered sequence and a live message (None after a quiet spell).
    A gap means earlier messages were published late (another replica) or dropped by a full
    inbox; the store has them, since a message is stored before it is published."""
    if live is None or live.sequence > last + 1:
        return Step.FILL
    if live.sequence == last + 1:
        return Step.DELIVER
    return Step.SKIP


class ChatInbox:
    """Live messages waiting for delivery (bounded: the oldest are dropped and later refilled
    from the store), plus the error that ends the stream when the request side fails."""

    __slots__ = ("_error", "_items", "_ready")

    def __init__(self, depth: int = INBOX_DEPTH) -> None:
        self._items: deque[pb.ChatMessage] = deque(maxlen=depth)
        self._error: BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, message: pb.ChatMessage) -> None:
        self._items.append(message)
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._ready.set()

    async def get(self, timeout_s: float) -> pb.ChatMessage | None:
        """The next live message, None after `timeout_s` without one; raises a request error."""
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that lands
        # as the event is set, leaving a cancelled stream running.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        if self._error is not None:
            raise self._error
        if not self._items:
            return None
        message = self._items.popleft()
        if not self._items:
            self._ready.clear()
        return message


async def chat(
    rides: RideReader,
    messages: ChatLog,
    chat_hub: Hub[pb.ChatMessage],
    publish: Publish,
    requests: AsyncIterator[pb.ChatRequest],
    *,
    identify: Identify = claimed_participant,
    resync_s: float = RESYNC_S,
) -> AsyncIterator[pb.ChatResponse]:
    """Joins a ride's chat, replays what the caller missed, then delivers every message (the
    caller's own included) in sequence order while storing and publishing what it sends.
    The stream stays open after the caller half-closes, so a read-only client keeps receiving."""
    join = await _join(requests)
    if not join.ride_id:
        raise InvalidArgument("join.ride_id is required")
    ride_id = validate_id(join.ride_id, "join.ride_id")
    if join.after_sequence < 0:
        raise InvalidArgument(
            f"join.after_sequence must not be negative, got {join.after_sequence}"
        )
    who = identify(join)
    ride = await rides.get(ride_id)
    if ride is None:
        raise NotFound(f"no ride with id {ride_id!r}")
    authorize(ride, who)
    inbox = ChatInbox()
    channel = chat_channel(ride_id)
    # Subscribed before the replay: a message stored in between arrives live, not lost.
    await chat_hub.add(channel, inbox.put, on_lost=inbox.fail)
    sender = asyncio.create_task(_send_all(rides, messages, publish, ride_id, who, requests, inbox))
    try:
        last = join.after_sequence
        step = Step.FILL
        while True:
            if step is Step.FILL:
                async for message in _missed(messages, ride_id, last):
                    last = message.sequence
                    yield pb.ChatResponse(message=message)
            live = await inbox.get(resync_s)
            step = next_step(last, live)
            if step is Step.DELIVER:
                assert live is not None
                last = live.sequence
                yield pb.ChatResponse(message=live)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await chat_hub.remove(channel, inbox.put)


async def _missed(messages: ChatLog, ride_id: str, after: int) -> AsyncIterator[pb.ChatMessage]:
    """Every stored message after `after`, in order, a page at a time."""
    while True:
        page = await messages.chat_messages_after(ride_id, after, FILL_PAGE)
        for message in page:
            after = message.sequence
            yield message
        if len(page) < FILL_PAGE:
            return


async def _join(requests: AsyncIterator[pb.ChatRequest]) -> pb.ChatJoin:
    first = await anext(requests, None)
    if first is None or first.WhichOneof("kind") != "join":
        raise InvalidArgument("the first message of a Chat stream must be `join`")
    return first.join


async def _send_all(
    rides: RideReader,
    messages: ChatLog,
    publish: Publish,
    ride_id: str,
    who: Participant,
    requests: AsyncIterator[pb.ChatRequest],
    inbox: ChatInbox,
) -> None:
    """Stores and publishes each `send`; any failure ends the stream through the inbox."""
    try:
        async for request in requests:
            if request.WhichOneof("kind") != "send":
                raise InvalidArgument("`join` may only be sent once, as the first message")
            message = await _send(rides, messages, publish, ride_id, who, request.send)
            # The sender's own copy takes the ordered path too, so it is never shown early.
            inbox.put(message)
    except Exception as exc:  # handed to the delivering side, which raises it to the caller
        inbox.fail(exc)


async def _send(
    rides: RideReader,
    messages: ChatLog,
    publish: Publish,
    ride_id: str,
    who: Participant,
    send: pb.ChatSend,
) -> pb.ChatMessage:
    validate_send(send)
    ride = await rides.get(ride_id)
    if ride is None:
        raise NotFound(f"no ride with id {ride_id!r}")
    check_open(ride)
    message = await messages.add_chat_message(
        ride_id, who.party, who.participant_id, send.text, send.client_message_id
    )
    # Published again on a resend too: heals a first attempt that stored but never published.
    await publish(message)
    return message
