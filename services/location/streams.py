"""Live driver streams of this process: their outgoing messages and the ticker that acks them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Collection, Container, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from ridemesh.v1.common_pb2 import DriverAvailability
from ridemesh.v1.location_service_pb2 import (
    FixFilter,
    LocationAck,
    LocationRejected,
    StreamLocationsResponse,
)
from services.domain.errors import DomainError, Unavailable
from services.domain.fix_quality import Filtered
from services.live.ingest import StreamId
from services.live.names import partition_of
from services.location.session import DriverSession, FixKey, InFlight
from services.observability.metrics import FIXES_FILTERED, FIXES_LOST, FIXES_REJECTED
from services.server.failures import raise_if_cancelling, unavailable

if TYPE_CHECKING:
    from services.location.steering import StreamSteer

T = TypeVar("T")

log = logging.getLogger(__name__)

# Rejections waiting for a client that does not read its responses are capped, oldest dropped.
MAX_QUEUED_REJECTIONS = 64
# Offers and availability changes waiting to be written; they come seconds apart, so a full
# queue means the app stopped reading (the oldest is then dropped, and logged).
MAX_QUEUED_CONTROL = 32


def rejection(seq: int, driver_id: str, error: DomainError) -> LocationRejected:
    """A fix refused, as the app is told (in-band on its stream, or in an upload's answer)."""
    FIXES_REJECTED.labels(error.code.name.lower()).inc()
    fix_filter: FixFilter.ValueType = FixFilter.FIX_FILTER_UNSPECIFIED
    if isinstance(error, Filtered):
        fix_filter = error.filter
        FIXES_FILTERED.labels(filter_label(fix_filter)).inc()
    return LocationRejected(
        seq=seq,
        code=error.code.value[0],
        message=str(error),
        driver_id=driver_id[:128],
        filter=fix_filter,
    )


def filter_label(fix_filter: FixFilter.ValueType) -> str:
    """The metric label of a filter: FIX_FILTER_SPEED_JUMP -> speed_jump."""
    return FixFilter.Name(fix_filter).removeprefix("FIX_FILTER_").lower()


class DriverStream:
    """One StreamLocations call: the session plus what is waiting to be written to the app."""

    __slots__ = (
        "session",
        "wake",
        "availability",
        "control_channel",
        "_rejections",
        "_control",
        "_ack_pending",
        "closing",
        "failure",
        "steer",
    )

    def __init__(self, session: DriverSession) -> None:
        self.session = session
        self.wake = asyncio.Event()
        # Stamped on every fix of this stream; follows the driver's rides (see `control`).
        self.availability = DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE
        # The driver's control channel once subscribed, so the stream can unsubscribe at its end.
        self.control_channel: str | None = None
        self._rejections: deque[StreamLocationsResponse] = deque(maxlen=MAX_QUEUED_REJECTIONS)
        self._control: deque[StreamLocationsResponse] = deque()
        self._ack_pending = False
        # Set when the stream should end once its fixes are durable (client done or draining).
        self.closing = False
        # Set when the stream must end with this error after its last messages (a fix was lost).
        self.failure: DomainError | None = None
        # Turns activities into sampling hints and spaces fix requests (location/steering.py).
        self.steer: StreamSteer | None = None

    def reject(self, seq: int, driver_id: str, error: DomainError) -> None:
        self._rejections.append(StreamLocationsResponse(rejected=rejection(seq, driver_id, error)))
        self.wake.set()

    def control(self, message: StreamLocationsResponse) -> None:
        """A message for this driver from RideService (an offer, a withdrawal, availability, an
        activity) or a watcher (a fix request);
        runs in the hub's reader, so it only queues."""
        if self.steer is not None:
            steered = self.steer.control(message)
            if steered is None:
                return
            message = steered
        if message.WhichOneof("kind") == "availability":
            self.availability = message.availability
        if len(self._control) >= MAX_QUEUED_CONTROL:
            dropped = self._control.popleft()
            log.warning(
                "driver %s is not reading its stream: dropped %s",
                self.session.driver_id,
                dropped.WhichOneof("kind"),
                extra={"driver_id": self.session.driver_id},
            )
        self._control.append(message)
        self.wake.set()

    def lost(self, fix: InFlight) -> None:
        """A fix this stream accepted will never be stored: the stream ends, after a last ack
        whose durable_seq stops below it, telling the app what to send again."""
        durable = self.session.durable_seq
        self.failure = Unavailable(
            f"fix seq {fix.seq} was accepted but lost before it was stored (the live store, "
            f"Redis, lost data); send every fix after durable_seq {durable} again with "
            "UploadLocations, then reconnect"
        )
        log.warning(
            "driver %s: fix seq %d lost before it was stored; the stream ends at durable_seq %d",
            self.session.driver_id,
            fix.seq,
            durable,
            extra={"driver_id": self.session.driver_id},
        )
        FIXES_LOST.inc()
        self.request_ack()

    def request_ack(self) -> None:
        self._ack_pending = True
        self.wake.set()

    def outgoing(self) -> list[StreamLocationsResponse]:
        """Everything to write now: rejections, then offers and availability changes in the
        order they came, then one ack with the latest seqs."""
        messages = list(self._rejections)
        self._rejections.clear()
        if self._control:
            messages += self._control
            self._control.clear()
        if self._ack_pending:
            self._ack_pending = False
            ack = LocationAck(seq=self.session.accepted_seq, durable_seq=self.session.durable_seq)
            messages.append(StreamLocationsResponse(ack=ack))
        return messages

    @property
    def finished(self) -> bool:
        if self.failure is not None:
            return not self._ack_pending
        return self.closing and self.session.fully_durable and not self._ack_pending


# Fixes accepted but not yet durable are acked (accepted seq only) at most this often; normally
# the durable ack, a moment later, carries both seqs.
ACCEPTED_ACK_S = 2.0
# An accepted fix not found in PostgreSQL this long after it was accepted is given up as lost,
# even when the ingest watermark never passed it (a Redis whose clock went back).
LOST_AFTER_S = 120.0


class Watermarks(Protocol):
    """Each partition's ingest watermark (services.live.ingest.IngestLogs)."""

    async def watermarks(self, partitions: Iterable[int]) -> dict[int, StreamId | None]: ...


class StoredKeys(Protocol):
    """Which fixes PostgreSQL holds (services.history.store.HistoryStore)."""

    async def stored_keys(self, keys: Sequence[FixKey]) -> set[FixKey]: ...


# The ack ticker visits the streams in this many slices spread over each interval, so their acks
# go out in small groups rather than one burst that delays everything else on the loop (a
# watcher's fix behind 500 acks waits tens of milliseconds).
ACK_SLICES = 10


class StreamRegistry:
    """Tracks this process's driver streams and, every tick, tells each how far its fixes got."""

    def __init__(
        self,
        logs: Watermarks,
        history: StoredKeys,
        interval_s: float,
        *,
        lost_after_s: float = LOST_AFTER_S,
        slices: int = ACK_SLICES,
        committed_here: Container[FixKey] = frozenset(),
    ) -> None:
        self._logs = logs
        self._history = history
        # Fixes this process's own persister committed: settled without asking PostgreSQL.
        self._committed_here = committed_here
        self._lost_after_s = lost_after_s
        self._interval_s = interval_s
        self._slices: list[set[DriverStream]] = [set() for _ in range(max(1, slices))]
        self._slice_of: dict[DriverStream, int] = {}
        self._next_slice = 0
        self.draining = False

    def _all(self) -> list[DriverStream]:
        return list(self._slice_of)

    def add(self, stream: DriverStream) -> None:
        index = self._next_slice
        self._next_slice = (index + 1) % len(self._slices)
        self._slices[index].add(stream)
        self._slice_of[stream] = index

    def discard(self, stream: DriverStream) -> None:
        index = self._slice_of.pop(stream, None)
        if index is not None:
            self._slices[index].discard(stream)

    def __len__(self) -> int:
        return len(self._slice_of)

    async def run(self) -> None:
        """Every interval, every stream is visited once, a slice at a time."""
        step = self._interval_s / len(self._slices)
        index = 0
        while True:
            await asyncio.sleep(step)
            try:
                await self._tick(self._slices[index])
            except Exception as exc:  # Redis away for a moment: acks resume on a later tick
                raise_if_cancelling(exc)
                log.exception("ack tick failed")
            index = (index + 1) % len(self._slices)

    async def tick(self) -> None:
        """One round over every stream (draining and tests use it)."""
        await self._tick(self._slice_of)

    async def _tick(self, streams: Collection[DriverStream]) -> None:
        """Reads the persistence watermark, asks PostgreSQL which of the fixes due by it are
        stored, then acks each of `streams` with news (or ends one whose fix was lost). With
        Redis or PostgreSQL away, acks still carry the accepted seq; durable_seq waits."""
        if not streams:
            return
        streams = list(streams)
        # Each stream's fixes are in its driver's partition: its watermark decides.
        parts = {s: partition_of(s.session.driver_id or "") for s in streams}
        marks = await _or_none(self._logs.watermarks(parts.values()), "read the ingest watermark")

        def below_of(stream: DriverStream) -> StreamId | None:
            return None if marks is None else marks[parts[stream]]

        now = time.monotonic()
        due = [k for s in streams for k in s.session.due(below_of(s), now, self._lost_after_s)]
        stored = await self._stored(due)
        for stream in streams:
            session = stream.session
            below = below_of(stream)
            # Without PostgreSQL's answer nothing is settled: a fix is never called lost unseen.
            lost = (
                None if stored is None else session.settle(stored, below, now, self._lost_after_s)
            )
            if lost is not None and stream.failure is None:
                stream.lost(lost)
            elif session.ack_wanted(now, ACCEPTED_ACK_S):
                stream.request_ack()
            elif stream.finished:
                stream.wake.set()

    async def _stored(self, due: list[FixKey]) -> set[FixKey] | None:
        """Which of `due` PostgreSQL holds: those this process committed itself, and the rest as
        PostgreSQL answers; None when it cannot answer (then nothing may be settled)."""
        here = self._committed_here
        elsewhere = [key for key in due if key not in here]
        if not elsewhere:
            return set(due)
        found = await _or_none(self._history.stored_keys(elsewhere), "check durability")
        if found is None:
            return None
        return found.union(key for key in due if key in here)

    def start_draining(self) -> None:
        """Stops taking fixes; each stream ends once what it accepted is durable."""
        self.draining = True
        for stream in self._all():
            stream.closing = True
            stream.wake.set()

    async def wait_finished(self, timeout_s: float) -> None:
        """Ticks until every stream is finished or the timeout passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(not s.finished for s in self._all()) and loop.time() < deadline:
            await self.tick()
            await asyncio.sleep(min(0.1, self._interval_s))


async def _or_none(work: Awaitable[T], what: str) -> T | None:
    """`work`'s answer, or None when a dependency is away (logged; the next tick tries again)."""
    try:
        return await work
    except Exception as exc:
        raise_if_cancelling(exc)
        failure = unavailable(exc)
        if failure is None:
            raise
        log.warning("acks wait: could not %s: %s", what, failure)
        return None
