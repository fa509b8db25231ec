"""ReplayFleet: stored fixes inside a box and a time range, played back in time order at a speed.

History only: fixes come from PostgreSQL in keyset pages (the next page is read while the
current one plays) and go to this caller alone. Nothing here reads or writes Redis, publishes,
or feeds geofence, proximity or ride events. A PostgreSQL failure mid-replay ends the call with
UNAVAILABLE naming it (the error interceptor maps the driver's exception).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.area import Box
from services.domain.errors import InvalidArgument
from services.geo.pacing import Pacer, Played, ReplayClock, Sleep
from services.geo.track import driver_location, time_range
from services.history.box_reads import BoxQuery, box_fix_pages
from services.history.read_ahead import prefetched
from services.history.store import HistoryStore
from services.observability.metrics import REPLAY_FIXES, REPLAY_LATE

MAX_RANGE = timedelta(hours=24)
MAX_SPEED = 3_600.0
PAGE_SIZE = 1_000


def replay_query(request: pb.ReplayFleetRequest) -> tuple[BoxQuery, float]:
    """The box, range and speed of a request; raises InvalidArgument naming the wrong field."""
    if not request.HasField("bounds"):
        raise InvalidArgument("bounds is required: the box whose drivers to replay")
    box = Box.from_proto(request.bounds)
    start, end = time_range(request)
    if end - start > MAX_RANGE:
        raise InvalidArgument(
            f"end_time must be at most 24 hours after start_time, got {end - start}; "
            "replay a longer period as several calls"
        )
    return BoxQuery(box, start, end), speed_of(request.speed)


def speed_of(requested: float) -> float:
    """The playback speed: 0 means real time (1); otherwise finite, positive, at most 3,600."""
    if not math.isfinite(requested) or requested < 0:
        raise InvalidArgument(f"speed must be a finite number from 0 to 3,600, got {requested}")
    if requested > MAX_SPEED:
        raise InvalidArgument(f"speed must be at most 3,600 (an hour a second), got {requested}")
    return requested or 1.0


async def replay_fleet(
    history: HistoryStore,
    request: pb.ReplayFleetRequest,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> AsyncIterator[pb.ReplayFleetResponse]:
    """The replay's messages. The clock starts before the first page is read, so a slow read
    makes fixes late, never early."""
    query, speed = replay_query(request)
    pages = prefetched(box_fix_pages(history, query, PAGE_SIZE))
    try:
        pacer = Pacer(ReplayClock(query.start, speed, monotonic), query.end, sleep)
        async for played in pacer.play(pages):
            if played.fix is not None:
                REPLAY_FIXES.inc()
                REPLAY_LATE.observe(played.late_s)
            yield response_of(played)
    finally:
        await pages.aclose()


def response_of(played: Played) -> pb.ReplayFleetResponse:
    """A played fix, or a tick, as the API's message."""
    replay_time = Timestamp()
    replay_time.FromDatetime(played.replay_time)
    if played.fix is None:
        return pb.ReplayFleetResponse(replay_time=replay_time)
    return pb.ReplayFleetResponse(location=driver_location(played.fix), replay_time=replay_time)
