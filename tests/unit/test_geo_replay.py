"""Replay pacing and validation without servers: a fake clock that sleeping moves forward."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ridemesh.v1 import common_pb2
from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.area import Box
from services.domain.errors import InvalidArgument
from services.geo.pacing import Pacer, Played, ReplayClock
from services.geo.replay import replay_query, response_of, speed_of
from services.history.box_reads import geocentric_cover_wkt
from services.history.read_ahead import prefetched
from services.history.store import FixRow

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeTime:
    """A monotonic clock that only moves when someone sleeps (or a slow reader waits)."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the pacer never sleeps for nothing"
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def _fix(driver: str, offset_s: float, seq: int) -> FixRow:
    at = START + timedelta(seconds=offset_s)
    return FixRow(driver, 52.5, 13.4, 0.0, 0.0, 5.0, at, seq, at)


async def _pages(*pages: list[FixRow]) -> AsyncIterator[Iterable[FixRow]]:
    for page in pages:
        yield page


async def _play(
    fake: FakeTime,
    pages: list[list[FixRow]],
    speed: float,
    end_s: float,
    read_delay_s: float = 0.0,
) -> list[tuple[float, Played]]:
    """(wall seconds since the start, message) for every message, reading each after
    `read_delay_s` of wall time (a slow client)."""
    origin = fake.now
    pacer = Pacer(
        ReplayClock(START, speed, fake.monotonic), START + timedelta(seconds=end_s), fake.sleep
    )
    received = []
    async for played in pacer.play(_pages(*pages)):
        received.append((fake.now - origin, played))
        fake.now += read_delay_s
    return received


def _fixes(received: list[tuple[float, Played]]) -> list[FixRow]:
    return [played.fix for _, played in received if played.fix is not None]


async def test_every_fix_once_in_order_never_before_it_is_due() -> None:
    fake = FakeTime()
    fixes = [_fix("a", 0, 1), _fix("b", 0, 1), _fix("a", 4, 2), _fix("b", 4.5, 2)]
    fixes += [_fix(f"c{i}", 30 + i * 0.25, i) for i in range(20)]
    received = await _play(fake, [fixes[:3], fixes[3:10], fixes[10:]], speed=10, end_s=60)
    assert _fixes(received) == fixes
    for wall_s, played in received:
        if played.fix is not None:
            due_s = (played.fix.recorded_at - START).total_seconds() / 10
            assert due_s <= wall_s < due_s + 1e-6  # never early, and not held back either
            assert played.replay_time >= played.fix.recorded_at
            assert played.late_s < 1e-6


async def test_ticks_about_once_a_second_across_a_quiet_span_then_a_final_tick() -> None:
    fake = FakeTime()
    received = await _play(fake, [[_fix("a", 0, 1), _fix("a", 100, 2)]], speed=10, end_s=150)
    walls = [wall for wall, _ in received]
    gaps = [b - a for a, b in itertools.pairwise(walls)]
    assert max(gaps) <= 1.0 + 1e-9  # the slider never waits more than a second
    ticks = [played for _, played in received if played.fix is None]
    assert len(ticks) >= 13  # 10 s of wall time between the fixes, 5 s after them
    times = [played.replay_time for _, played in received]
    assert times == sorted(times)
    assert received[-1][1] == Played(None, START + timedelta(seconds=150))
    assert received[-1][0] == pytest.approx(15.0)


async def test_first_message_is_an_immediate_tick_when_nothing_is_due() -> None:
    fake = FakeTime()
    received = await _play(fake, [[_fix("a", 50, 1)]], speed=1, end_s=60)
    assert received[0] == (0.0, Played(None, START))


async def test_a_slow_reader_delays_fixes_but_loses_none() -> None:
    fake = FakeTime()
    fixes = [_fix("a", i * 0.1, i) for i in range(50)]
    received = await _play(fake, [fixes[:25], fixes[25:]], speed=1, end_s=10, read_delay_s=2.0)
    assert _fixes(received) == fixes
    lateness = [played.late_s for _, played in received if played.fix is not None]
    assert lateness[0] == 0.0
    assert lateness[-1] > 50  # read every 2 s, due every 0.1 s
    # Behind the clock, due fixes go out back to back with no ticks between them.
    assert [played.fix is None for _, played in received[:50]] == [False] * 50
    times = [played.replay_time for _, played in received]
    assert times == sorted(times)


async def test_no_fixes_plays_ticks_to_the_end() -> None:
    fake = FakeTime()
    received = await _play(fake, [], speed=3600, end_s=3600 * 3)
    assert received[-1][1].replay_time == START + timedelta(hours=3)
    assert received[-1][0] == pytest.approx(3.0)
    assert all(played.fix is None for _, played in received)


def _request(**fields: object) -> pb.ReplayFleetRequest:
    request = pb.ReplayFleetRequest(
        bounds=common_pb2.BoundingBox(
            south_west=common_pb2.LatLng(latitude=52.0, longitude=13.0),
            north_east=common_pb2.LatLng(latitude=53.0, longitude=14.0),
        ),
        start_time=_ts(START),
        end_time=_ts(START + timedelta(hours=1)),
        speed=60,
    )
    for name, value in fields.items():
        if value is None:
            request.ClearField(name)  # type: ignore[arg-type]
        elif isinstance(value, Timestamp | common_pb2.BoundingBox):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def test_a_valid_request_gives_its_box_range_and_speed() -> None:
    query, speed = replay_query(_request())
    assert (query.box, query.start, query.end, speed) == (
        Box(52.0, 13.0, 53.0, 14.0),
        START,
        START + timedelta(hours=1),
        60.0,
    )


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"bounds": None}, "bounds"),
        ({"bounds": common_pb2.BoundingBox()}, "bounds"),
        (
            {
                "bounds": common_pb2.BoundingBox(
                    south_west=common_pb2.LatLng(latitude=60, longitude=13),
                    north_east=common_pb2.LatLng(latitude=50, longitude=14),
                )
            },
            "bounds",
        ),
        ({"start_time": None}, "start_time"),
        ({"end_time": None}, "end_time"),
        ({"end_time": _ts(START)}, "end_time"),
        ({"end_time": _ts(START + timedelta(hours=24, microseconds=1))}, "24 hours"),
        ({"speed": -1.0}, "speed"),
        ({"speed": math.nan}, "speed"),
        ({"speed": math.inf}, "speed"),
        ({"speed": 3600.5}, "speed"),
    ],
)
def test_bad_requests_name_the_field(fields: dict[str, object], names: str) -> None:
    with pytest.raises(InvalidArgument, match=names):
        replay_query(_request(**fields))


def test_speed_zero_is_real_time_and_the_bounds_are_allowed() -> None:
    assert (speed_of(0), speed_of(1), speed_of(3600)) == (1.0, 1.0, 3600.0)
    query, _ = replay_query(_request(end_time=_ts(START + timedelta(hours=24))))
    assert query.end - query.start == timedelta(hours=24)


def test_a_tick_has_no_location_and_a_fix_has_one() -> None:
    tick = response_of(Played(None, START))
    assert not tick.HasField("location")
    assert tick.replay_time.ToDatetime(tzinfo=UTC) == START
    fix = response_of(Played(_fix("a", 1.5, 7), START + timedelta(seconds=2)))
    assert (fix.location.driver_id, fix.location.seq) == ("a", 7)
    assert fix.location.recorded_at.ToDatetime(tzinfo=UTC) == START + timedelta(seconds=1.5)


async def test_prefetch_reads_the_next_item_while_the_caller_holds_this_one() -> None:
    asked: list[int] = []
    closed = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            for i in range(5):
                asked.append(i)
                yield i
        finally:
            closed.set()

    items = prefetched(source())
    assert await anext(items) == 0
    await asyncio.sleep(0)
    assert asked == [0, 1]  # the next one is read before it is asked for
    await items.aclose()
    assert closed.is_set()
    assert asked == [0, 1]  # and no further: memory stays one item ahead


async def test_prefetch_passes_a_read_failure_on() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        raise OSError("database went away")

    items = prefetched(failing())
    assert await anext(items) == 1
    with pytest.raises(OSError, match="went away"):
        await anext(items)


def _cartesian(lat: float, lng: float) -> tuple[float, float, float]:
    phi, lam = math.radians(lat), math.radians(lng)
    return math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)


@pytest.mark.parametrize(
    "box",
    [
        Box(52.5, 13.3, 52.55, 13.45),  # a city
        Box(10.0, -90.0, 20.0, 90.0),  # half the world: an envelope's edges would cross the pole
        Box(-10.0, 170.0, 10.0, -170.0),  # across the equator and the antimeridian
        Box(-90.0, -180.0, 90.0, 180.0),  # everything
    ],
)
def test_the_geocentric_cover_holds_every_point_of_the_rectangle(box: Box) -> None:
    text = geocentric_cover_wkt(box)
    assert text.startswith("SRID=4326;MULTIPOINT(")
    corners = [tuple(map(float, p.split())) for p in text[21:-1].strip("()").split("), (")]
    xyz = [_cartesian(lat, lng) for lng, lat in corners]
    lows = [min(c[i] for c in xyz) for i in range(3)]
    highs = [max(c[i] for c in xyz) for i in range(3)]
    span = box.lng_span()
    for i in range(41):
        for j in range(41):
            lat = box.south + (box.north - box.south) * i / 40
            lng = box.west + span * j / 40
            lng = lng - 360 if lng > 180 else lng
            point = _cartesian(lat, lng)
            for axis in range(3):
                assert lows[axis] - 1e-12 <= point[axis] <= highs[axis] + 1e-12
