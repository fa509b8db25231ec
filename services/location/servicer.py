"""The LocationService RPC surface: thin handlers over the session, the live store and the hub."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as pb_grpc
from ridemesh.v1.common_pb2 import DriverAvailability, DriverLocation
from ridemesh.v1.location_service_pb2 import FixFilter
from services.auth import rules
from services.auth.identity import Identity, Role
from services.auth.interceptor import current_identity
from services.domain.area import Box, cells_for_box
from services.domain.errors import DomainError, InvalidArgument, NotFound, Unavailable
from services.domain.fix_quality import Filtered, Route, check_accuracy
from services.domain.validation import (
    FixLimits,
    fix_order,
    required_id,
    validate_id,
    validate_update,
)
from services.history.persister import fix_key, fix_row
from services.history.store import FixRow, HistoryStore
from services.live.fanout import Hub
from services.live.ingest import IngestFollower, StreamId
from services.live.mailboxes import KeyedLatest, Latest
from services.live.names import cell_channel, control_channel, driver_channel, partitions
from services.live.store import LiveStore
from services.location.session import DriverSession
from services.location.steering import Steering, sampling_policy
from services.location.streams import DriverStream, StreamRegistry, rejection
from services.location.throttle import TokenBucket
from services.observability.metrics import FIXES_ACCEPTED, FIXES_FILTERED, FIXES_STORED_ONLY
from services.server.config import Settings
from services.server.failures import (
    Dependency,
    cancel_and_wait,
    message,
    raise_if_cancelling,
    unavailable,
)

# An area touching more grid cells than this listens on the all-cells pattern instead.
MAX_AREA_CELLS = 64
# Drivers sent at once when a WatchArea starts.
AREA_SNAPSHOT_LIMIT = 5000
# A WatchDriver reader may fall this many fixes behind before the oldest are dropped.
WATCH_DEPTH = 16
# After the app closes its side, the stream stays open this long for the final durable ack.
FINAL_ACK_WAIT_S = 10.0


class LocationServicer(pb_grpc.LocationServiceServicer):
    """Handlers only translate between messages and the parts that do the work."""

    def __init__(
        self,
        settings: Settings,
        live: LiveStore,
        history: HistoryStore,
        hub: Hub[DriverLocation],
        streams: StreamRegistry,
        control: Hub[pb.StreamLocationsResponse],
    ) -> None:
        self._settings = settings
        self._live = live
        self._history = history
        self._hub = hub
        # Messages for one driver's stream from RideService (offers, availability), via Redis,
        # so they reach whichever replica holds the stream.
        self._control = control
        self._streams = streams
        self._limits = FixLimits(settings.max_future_skew_s, settings.max_fix_age_s)
        # Sampling hints and fix requests on the driver streams.
        self._steering = Steering(live.redis, sampling_policy(settings), settings.live_window_s)

    async def StreamLocations(
        self,
        request_iterator: AsyncIterator[pb.StreamLocationsRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.StreamLocationsResponse]:
        bucket = TokenBucket(self._settings.fix_rate_per_s, self._settings.fix_burst)
        stream = DriverStream(DriverSession(self._limits, bucket, self._settings.fix_quality))
        self._streams.add(stream)
        who = current_identity()
        reader = asyncio.create_task(self._consume(request_iterator, stream, who))
        reader.add_done_callback(lambda task: _close(stream, task))
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        try:
            while not stream.finished:
                if reader.done() and deadline is None:
                    deadline = loop.time() + FINAL_ACK_WAIT_S
                timeout = None if deadline is None else deadline - loop.time()
                try:
                    await asyncio.wait_for(stream.wake.wait(), timeout)
                except TimeoutError:
                    break  # the app left and its last fixes are still not durable: stop waiting
                stream.wake.clear()
                for message in stream.outgoing():
                    yield message
            if stream.failure is not None:
                raise stream.failure
        finally:
            reader.cancel()
            self._streams.discard(stream)
            # Let a bind in progress finish or unwind, so its subscription is not left behind.
            await asyncio.gather(reader, return_exceptions=True)
            if stream.control_channel is not None:
                await self._control.remove(stream.control_channel, stream.control)
        if self._streams.draining:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "server is shutting down; reconnect to continue"
            )

    async def _consume(
        self,
        requests: AsyncIterator[pb.StreamLocationsRequest],
        stream: DriverStream,
        who: Identity,
    ) -> None:
        async for request in requests:
            kind = request.WhichOneof("kind")
            if kind == "update":
                await self._accept(stream, request.update, who)
            elif kind == "heartbeat":
                stream.request_ack()

    async def _accept(self, stream: DriverStream, update: pb.LocationUpdate, who: Identity) -> None:
        session = stream.session
        now = time.time()
        try:
            if self._streams.draining:
                raise Unavailable("server is shutting down; this fix was not taken, send it again")
            # Rejected in-band like any bad fix: the driver's own fixes keep flowing.
            rules.may_publish_fixes(who, update.driver_id)
            if session.driver_id is None:
                await self._bind(stream, validate_id(update.driver_id))
            recorded_s = session.admit(update, now, time.monotonic())
            route = session.quality.judge(update, recorded_s, now)
            location = _location(update, now, stream.availability)
            entry_id = await self._ingest(location, route, session.quality.anchor)
        except DomainError as error:
            stream.reject(update.seq, update.driver_id, error)
            return
        except Exception as exc:
            raise_if_cancelling(exc)
            # Redis away: this fix is refused in-band (the app keeps it); the stream goes on.
            failure = unavailable(exc)
            if failure is None:
                raise
            stream.reject(update.seq, update.driver_id, failure)
            return
        FIXES_ACCEPTED.inc()
        session.quality.accepted(update, recorded_s, route)
        session.accepted(update.seq, entry_id, fix_key(location), time.monotonic())
        if route is not Route.STORE:  # a late fix says nothing of where the driver is now
            await self._steering.fixed(stream, update)

    async def _ingest(
        self, location: DriverLocation, route: Route, anchor: tuple[float, float] | None
    ) -> StreamId:
        """Writes an accepted fix to the live state and the ingest log, as its route says: a
        late fix is only stored; stationary jitter is stored as sent while the live state
        shows it at the driver's standing position (the anchor)."""
        payload = location.SerializeToString()
        if route is Route.LIVE:
            return await self._live.ingest(location, payload)
        if route is Route.STORE:
            FIXES_STORED_ONLY.labels("late").inc()
            return await self._live.ingest(location, payload, live=False)
        FIXES_FILTERED.labels("stationary_jitter").inc()
        held = DriverLocation()
        held.CopyFrom(location)
        if anchor is not None:
            held.position.latitude, held.position.longitude = anchor
        return await self._live.ingest(held, held.SerializeToString(), stored=payload)

    async def _bind(self, stream: DriverStream, driver_id: str) -> None:
        """Ties the stream to its driver: control messages first, then the stored state, so an
        availability change in between is seen either way (the hash is written before it is
        published)."""
        channel = control_channel(driver_id)
        stream.control_channel = channel
        self._steering.attach(stream)
        await self._control.add(channel, stream.control)
        last_seq, availability = await self._live.last_state(driver_id)
        stream.availability = availability
        stream.session.bind(driver_id, last_seq)
        await self._steering.bound(stream, driver_id)

    async def UploadLocations(
        self, request: pb.UploadLocationsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.UploadLocationsResponse:
        count = len(request.updates)
        if count == 0 or count > self._settings.max_upload_batch:
            raise InvalidArgument(
                f"updates must hold 1 to {self._settings.max_upload_batch} fixes, got {count}"
            )
        who = current_identity()
        for update in request.updates:
            rules.may_publish_fixes(who, update.driver_id)
        now = time.time()
        rows: list[FixRow] = []
        rejected: list[pb.LocationRejected] = []
        durable: dict[str, int] = {}
        # Uploads are stored only (never live, no events), so of the quality filters only those
        # that judge a fix on its own apply: accuracy, and repeats within the request.
        quality = self._settings.fix_quality
        seen: dict[tuple[str, float, float, float], int] = {}
        for update in request.updates:
            try:
                recorded_s = validate_update(update, now, self._limits)
                check_accuracy(update, quality)
                _check_repeat(update, recorded_s, seen, quality.drop_duplicates)
            except InvalidArgument as error:
                rejected.append(rejection(update.seq, update.driver_id, error))
                continue
            rows.append(fix_row(_location(update, now)))
            durable[update.driver_id] = max(durable.get(update.driver_id, 0), update.seq)
        stored = await self._history.insert_fixes(rows) if rows else 0
        FIXES_STORED_ONLY.labels("upload").inc(stored)
        return pb.UploadLocationsResponse(
            durable_seqs=[
                pb.DriverDurableSeq(driver_id=d, durable_seq=s) for d, s in sorted(durable.items())
            ],
            stored_count=stored,
            duplicate_count=len(rows) - stored,
            rejected=rejected,
        )

    async def GetDriverLocation(
        self, request: pb.GetDriverLocationRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetDriverLocationResponse:
        driver_id = required_id(request.driver_id)
        await self._may_read_driver(current_identity(), driver_id)
        location = await self._live.get_location(driver_id)
        if location is None:
            raise NotFound(
                f"driver {driver_id!r} has no live location (no fix in the last "
                f"{self._settings.live_window_s:.0f} s)"
            )
        return pb.GetDriverLocationResponse(location=location)

    async def WatchDriver(
        self, request: pb.WatchDriverRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchDriverResponse]:
        driver_id = required_id(request.driver_id)
        who = current_identity()
        await self._may_read_driver(who, driver_id)
        channel = driver_channel(driver_id)
        mailbox: Latest[DriverLocation] = Latest(WATCH_DEPTH)
        await self._hub.add(channel, mailbox.put, on_lost=mailbox.fail)
        try:
            await self._steering.watching(driver_id, "someone started watching the driver")
            last = (0, 0)
            current = await self._live.get_location(driver_id)
            if current is not None:
                last = fix_order(current)
                yield pb.WatchDriverResponse(location=current)
            while True:
                location = await mailbox.get()
                if who.role is Role.RIDER:
                    # A rider's view ends with the ride: the next fix after it ends is refused.
                    await self._may_read_driver(who, driver_id)
                # The first screen may already show a fix that was also published meanwhile.
                if fix_order(location) > last:
                    last = fix_order(location)
                    yield pb.WatchDriverResponse(location=location)
        finally:
            await self._hub.remove(channel, mailbox.put)

    async def WatchArea(
        self, request: pb.WatchAreaRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchAreaResponse]:
        rules.may_watch_area(current_identity())
        if not request.HasField("bounds"):
            raise InvalidArgument("bounds is required")
        box = Box.from_proto(request.bounds)
        mailbox: KeyedLatest[DriverLocation] = KeyedLatest(1.0, time.monotonic)
        inside: set[str] = set()

        def sink(location: DriverLocation) -> None:
            # Runs in the hub's reader for every fix in the watched cells: keep it cheap.
            driver_id = location.driver_id
            if box.contains(location.position.latitude, location.position.longitude):
                inside.add(driver_id)
                mailbox.put(driver_id, location)
            elif driver_id in inside:
                inside.discard(driver_id)
                mailbox.put(driver_id, location)

        cells = cells_for_box(box, MAX_AREA_CELLS)
        # A box of many cells reads every partition's ingest log instead (sharded pub/sub has
        # no patterns): the same fixes, a batch per read.
        channels = [cell_channel(p, c) for c in cells for p in partitions()] if cells else []
        followers = [] if cells else await self._follow_all(sink, mailbox.fail)
        for channel in channels:
            await self._hub.add(channel, sink, on_lost=mailbox.fail)
        try:
            for location in await self._live.locations_in_box(box, AREA_SNAPSHOT_LIMIT):
                inside.add(location.driver_id)
                mailbox.put_if_absent(location.driver_id, location)
            while True:
                for location in await mailbox.get_batch():
                    exited = not box.contains(
                        location.position.latitude, location.position.longitude
                    )
                    yield pb.WatchAreaResponse(location=location, exited=exited)
        finally:
            await cancel_and_wait(followers)
            for channel in channels:
                await self._hub.remove(channel, sink)

    async def _follow_all(
        self, sink: Callable[[DriverLocation], None], lost: Callable[[Exception], None]
    ) -> list[asyncio.Task[None]]:
        """Feeds `sink` every fix entered in any partition's log from now on; a failed read
        tells `lost` (the watcher ends with UNAVAILABLE, as a lost subscription would)."""
        redis = self._live.redis
        followers = [IngestFollower(redis, p, retry_s=None) for p in partitions()]
        for follower in followers:
            await follower.start()

        async def follow(follower: IngestFollower) -> None:
            try:
                async for payloads in follower.batches():
                    for payload in payloads:
                        sink(DriverLocation.FromString(payload))
            except Exception as exc:
                raise_if_cancelling(exc)
                lost(Unavailable(message(Dependency.REDIS)))

        return [asyncio.create_task(follow(f), name="watch-area-follow") for f in followers]

    async def _may_read_driver(self, who: Identity, driver_id: str) -> None:
        """Raises PermissionDenied unless `who` may read the driver's location now."""
        # Only a rider's check needs the assignment, so only riders pay for the Redis read.
        assigned = await self._live.assigned_rider(driver_id) if who.role is Role.RIDER else None
        rules.may_read_driver(who, driver_id, assigned)


def _location(
    update: pb.LocationUpdate,
    now: float,
    availability: DriverAvailability.ValueType = DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE,
) -> DriverLocation:
    location = DriverLocation(
        driver_id=update.driver_id,
        position=update.position,
        heading_deg=update.heading_deg,
        speed_mps=update.speed_mps,
        accuracy_m=update.accuracy_m,
        recorded_at=update.recorded_at,
        seq=update.seq,
        availability=availability,
    )
    location.received_at.FromNanoseconds(int(now * 1e9))
    return location


def _check_repeat(
    update: pb.LocationUpdate,
    recorded_s: float,
    seen: dict[tuple[str, float, float, float], int],
    drop_duplicates: bool,
) -> None:
    """Refuses a fix repeating the position and time of an earlier one of the same request
    under another seq (the same fix sent twice is stored once, as any re-send)."""
    key = (update.driver_id, recorded_s, update.position.latitude, update.position.longitude)
    if drop_duplicates and seen.get(key, update.seq) != update.seq:
        raise Filtered(
            f"seq {update.seq} repeats the position and time of another fix of driver "
            f"{update.driver_id!r} in this upload; it was not stored twice",
            FixFilter.FIX_FILTER_DUPLICATE,
        )
    seen[key] = update.seq


def _close(stream: DriverStream, reader: asyncio.Task[None]) -> None:
    if not reader.cancelled():
        reader.exception()  # a broken client connection ends the reader; the RPC ends with it
    stream.closing = True
    stream.wake.set()
