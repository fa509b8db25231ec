"""The event log: every zone and ride event, written once, in the same script that decided it,
into the stream of its driver's partition, where the stream id is its offset (increasing within
the partition; every event of one driver is in one partition, so a driver's events are in
order). Entries are kept for a retention window.

Readers: an `EventFeed` per process reads every partition's new entries once and hands them to
its sinks; `follow` is one watcher's view of the log, which resumes after a token (first the
entries it missed, from the log, then the feed's), each event once and in order per partition.
The webhook deliverer reads the log with its own cursors.

Each partition's log has a small hash beside it: its epoch (a random id set by the first
writer, so a Redis that came back empty is told apart), how many events were appended (each
event's ordinal) and how many were trimmed since. A resume token names, per partition, the
epoch, and the offset and ordinal of the last event received: it is too old when more events
were trimmed than it had seen (Redis's own max-deleted-entry-id does not count trimming).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ridemesh.v1.common_pb2 import DriverLocation
from services.domain.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.live.ingest import FOLLOW_COUNT, FOLLOW_EVERY_S, parse_stream_id
from services.live.mailboxes import Backlog
from services.live.names import events_meta_key, events_stream, partition_count, partitions
from services.live.replies import text
from services.server.failures import cancel_and_wait, raise_if_cancelling, unavailable

log = logging.getLogger(__name__)

StreamId = tuple[int, int]
ORIGIN: StreamId = (0, 0)
# How long events are kept by default (each append trims entries older than this).
RETENTION_S = 86_400.0
# A watcher this many events behind is ended (it resumes with its token and loses nothing).
WATCH_DEPTH = 4096
# A read blocks at most this long: well inside redis-py's default 5 s socket timeout.
READ_BLOCK_MS = 2_000
# Catching up reads the log this many entries at a time.
PAGE = 500

# Appends one event, from inside a script that holds the partition's keys. Needs `stream`,
# `meta` (the log's hash: e epoch, n appended, x trimmed; KEYS of the script) and its ARGV
# passed on: epoch candidate, retention ms.
LOG_EVENT_LUA = """
local function log_event(stream, meta, epoch, retention_ms, kind, fix, subject, reason)
  redis.call('HSETNX', meta, 'e', epoch)
  local now = redis.call('TIME')
  local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - retention_ms
  local trimmed = redis.call('XTRIM', stream, 'MINID', string.format('%d', oldest))
  if trimmed > 0 then redis.call('HINCRBY', meta, 'x', trimmed) end
  local n = redis.call('HINCRBY', meta, 'n', 1)
  redis.call('XADD', stream, '*', 'k', kind, 'f', fix, 's', subject, 'r', reason or '',
    'e', redis.call('HGET', meta, 'e'), 'n', n)
end
"""


def log_args(retention_s: float) -> list[Any]:
    """The ARGV `log_event` needs, in its order: an epoch candidate (new each time, so a Redis
    that came back empty gets a new epoch whoever writes first) and the retention in ms."""
    return [secrets.token_hex(4), round(retention_s * 1000)]


def fix_json(location: DriverLocation) -> str:
    """The fix an event logs (driver, ms time, position); json keeps float precision that Lua
    would round."""
    position = location.position
    return json.dumps(
        {
            "d": location.driver_id,
            "t": location.recorded_at.ToMilliseconds(),
            "lat": position.latitude,
            "lng": position.longitude,
        },
        separators=(",", ":"),
    )


def format_id(offset: StreamId) -> str:
    return f"{offset[0]}-{offset[1]}"


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One entry of the log: `kind` ("geofence.enter", "ride.at_pickup", ...), the fix that caused
    it and its subject (the zone or the ride) as JSON objects, and why when no fix did."""

    partition: int
    offset: StreamId
    epoch: str
    kind: str
    fix: Mapping[str, Any]
    subject: Mapping[str, Any]
    reason: str = ""
    ordinal: int = 0  # the how-manyeth event of its partition's log

    @property
    def event_id(self) -> str:
        """Stable across deliveries: the partition and the offset."""
        return f"{self.partition}:{format_id(self.offset)}"

    @property
    def driver_id(self) -> str:
        return str(self.fix.get("d", ""))


def decode_entry(
    partition: int, entry_id: bytes | str, fields: Mapping[bytes, bytes]
) -> LoggedEvent:
    return LoggedEvent(
        partition,
        parse_stream_id(entry_id),
        text(fields.get(b"e", b"")),
        text(fields[b"k"]),
        json.loads(fields[b"f"]),
        json.loads(fields[b"s"]),
        text(fields.get(b"r", b"")),
        int(fields.get(b"n", 0)),
    )


# --- Resume tokens (pure) ----------------------------------------------------------------------


@dataclass(slots=True)
class Position:
    """Per partition: the log's epoch as last seen ("" when unknown), and the offset and ordinal
    of the last event handled."""

    epochs: list[str]
    offsets: list[StreamId]
    ordinals: list[int]

    def advance(self, event: LoggedEvent) -> None:
        self.epochs[event.partition] = event.epoch
        self.offsets[event.partition] = event.offset
        self.ordinals[event.partition] = max(self.ordinals[event.partition], event.ordinal)

    def is_new(self, event: LoggedEvent) -> bool:
        return event.offset > self.offsets[event.partition]

    def token(self) -> str:
        raw = json.dumps(
            [1, self.epochs, [format_id(o) for o in self.offsets], self.ordinals],
            separators=(",", ":"),
        )
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def parse_token(token: str, count: int) -> Position:
    """A resume token as a position; raises InvalidArgument for one that is not a token, and
    FailedPrecondition for one from a mesh with another partition count."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, epochs, offsets, ordinals = json.loads(raw)
        if version != 1 or not len(epochs) == len(offsets) == len(ordinals):
            raise ValueError("unknown layout")
        position = Position(
            [str(e) for e in epochs],
            [parse_stream_id(o) for o in offsets],
            [int(n) for n in ordinals],
        )
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgument(
            "resume_token is not a token this service gave out: pass the `resume_token` of "
            "the last event received, unchanged, or none to start from now"
        ) from exc
    if len(position.offsets) != count:
        raise FailedPrecondition(
            f"resume_token is from an event log of {len(position.offsets)} partitions; this one "
            f"has {count}: watch without a resume_token to start from now"
        )
    return position


# --- Reading the log ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogState:
    """One partition's log: its epoch, first and last offsets (ORIGIN when it has none yet), and
    how many events were appended and trimmed."""

    epoch: str
    first: StreamId | None
    last: StreamId
    appended: int
    trimmed: int


class EventLog:
    """Reads every partition's log: its state, and entries after an offset."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def states(self) -> list[LogState]:
        pipe = self.redis.pipeline(transaction=False)
        for partition in partitions():
            pipe.xinfo_stream(events_stream(partition))
            pipe.hmget(events_meta_key(partition), ["e", "n", "x"])
        replies = await pipe.execute(raise_on_error=False)
        found = []
        for i in range(partition_count()):
            info, meta = replies[2 * i], replies[2 * i + 1]
            if isinstance(meta, Exception):
                raise meta
            epoch, appended, trimmed = text(meta[0] or b""), int(meta[1] or 0), int(meta[2] or 0)
            if isinstance(info, Exception):
                if "no such key" not in str(info).lower():
                    raise info
                found.append(LogState(epoch, None, ORIGIN, appended, trimmed))
                continue
            first = info.get("first-entry")
            found.append(
                LogState(
                    epoch,
                    parse_stream_id(first[0]) if first else None,
                    parse_stream_id(info["last-generated-id"]),
                    appended,
                    trimmed,
                )
            )
        return found

    async def after(self, partition: int, offset: StreamId, count: int = PAGE) -> list[LoggedEvent]:
        """Up to `count` entries of one partition after `offset`, oldest first."""
        entries: Any = await self.redis.xrange(
            events_stream(partition), min=f"({format_id(offset)}", count=count
        )
        return [decode_entry(partition, entry_id, fields) for entry_id, fields in entries]

    async def current(self) -> Position:
        """Every partition's newest offset and epoch: a position from which only new events
        follow."""
        states = await self.states()
        return Position(
            [s.epoch for s in states], [s.last for s in states], [s.appended for s in states]
        )


def check_resumable(position: Position, states: Sequence[LogState]) -> None:
    """Raises FailedPrecondition, naming the oldest event kept, when the log no longer holds every
    event after `position`: some were trimmed (older than the retention) or Redis lost the log."""
    for partition, (state, epoch, offset, ordinal) in enumerate(
        zip(states, position.epochs, position.offsets, position.ordinals, strict=True)
    ):
        oldest = (
            f"the oldest event kept there is {partition}:{format_id(state.first)}"
            if state.first
            else "it holds no events now"
        )
        restart = "; watch without a resume_token to start from now"
        if epoch and epoch != state.epoch:
            raise FailedPrecondition(
                f"resume_token is older than the event log of partition {partition}, which "
                f"was reset since (Redis lost its data): {oldest}{restart}"
            )
        if state.trimmed > ordinal:
            raise FailedPrecondition(
                f"resume_token is older than the event log's retention: events after "
                f"{partition}:{format_id(offset)} were dropped, and {oldest}{restart}"
            )


# --- The feed: every new event, read once per process ------------------------------------------

Sink = Callable[[LoggedEvent], None]
Lost = Callable[[Exception], None]


class EventFeed:
    """Reads each partition's log from where it stood at `start()`, in batches, and hands every
    entry to every sink. A failed read ends every sink (its watcher resumes with a token) and
    the feed goes on from where it was, so it never skips an entry."""

    def __init__(self, redis: Redis, *, every_s: float = FOLLOW_EVERY_S, retry_s: float = 0.5):
        self._redis = redis
        self._log = EventLog(redis)
        self._every_s = every_s
        self._retry_s = retry_s
        self._sinks: dict[Sink, Lost] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.position: Position | None = None

    async def start(self) -> None:
        self.position = await self._log.current()
        self._tasks = [asyncio.create_task(self._read(p), name=f"events-{p}") for p in partitions()]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)

    def add(self, sink: Sink, on_lost: Lost) -> Position:
        """Registers a sink; returns the position it starts after (every later entry reaches
        it)."""
        assert self.position is not None, "EventFeed.start() first"
        self._sinks[sink] = on_lost
        position = self.position
        return Position(list(position.epochs), list(position.offsets), list(position.ordinals))

    @property
    def sinks(self) -> int:
        return len(self._sinks)

    def remove(self, sink: Sink) -> None:
        self._sinks.pop(sink, None)

    async def _read(self, partition: int) -> None:
        assert self.position is not None
        stream = events_stream(partition)
        loop = asyncio.get_running_loop()
        read_at = 0.0
        while True:
            await asyncio.sleep(max(0.0, read_at + self._every_s - loop.time()))
            last = format_id(self.position.offsets[partition])
            try:
                reply: Any = await self._redis.xread(
                    {stream: last}, count=FOLLOW_COUNT, block=READ_BLOCK_MS
                )
            except (RedisError, OSError) as exc:
                raise_if_cancelling(exc)
                self._end_sinks(exc)
                await asyncio.sleep(self._retry_s)
                continue
            read_at = loop.time()
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    try:
                        event = decode_entry(partition, entry_id, fields)
                    except (KeyError, ValueError):
                        log.exception("undecodable event log entry skipped")
                        self.position.offsets[partition] = parse_stream_id(entry_id)
                        continue
                    self.position.advance(event)
                    for sink in list(self._sinks):
                        sink(event)

    def _end_sinks(self, exc: Exception) -> None:
        if self._sinks:
            log.warning("reading the event log failed (%s)", type(exc).__name__)
        error = unavailable(exc) or exc
        for on_lost in list(self._sinks.values()):
            on_lost(error)
        self._sinks.clear()


async def follow(
    feed: EventFeed,
    log_: EventLog,
    resume_token: str,
    wanted: Callable[[LoggedEvent], bool],
    *,
    depth: int = WATCH_DEPTH,
) -> AsyncIterator[tuple[LoggedEvent, str]]:
    """The events `wanted` accepts, each with the resume token that continues after it: after
    `resume_token` (first the logged ones the watcher missed) or, with none, from now on."""

    def overflow() -> Exception:
        return ResourceExhausted(
            f"this watch fell more than {depth} events behind; watch again with the last "
            "resume_token received to go on from there without a loss"
        )

    backlog: Backlog[LoggedEvent] = Backlog(depth, overflow)

    def sink(event: LoggedEvent) -> None:
        # Runs in the feed's reader for every event in the world: keep it cheap.
        if wanted(event):
            backlog.put(event)

    start = feed.add(sink, backlog.fail)
    try:
        if resume_token:
            position = parse_token(resume_token, partition_count())
            check_resumable(position, await log_.states())
            # Entries the feed also delivers are skipped below by offset.
            for partition in partitions():
                while True:
                    page = await log_.after(partition, position.offsets[partition])
                    for event in page:
                        position.advance(event)
                        if wanted(event):
                            yield event, position.token()
                    if len(page) < PAGE:
                        break
        else:
            position = start
        while True:
            event = await backlog.get()
            if position.is_new(event):
                position.advance(event)
                yield event, position.token()
    finally:
        feed.remove(sink)
