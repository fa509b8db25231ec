"""GetDriverTrack against real PostGIS: order, distance, pages, partitions, empty ranges, errors."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import make_url

from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.errors import InvalidArgument
from services.geo.track import get_driver_track
from services.history.store import (
    SELECT_FIXES_PAGE,
    SELECT_FIXES_PAGE_AFTER,
    FixRow,
    HistoryStore,
    create_engine,
    partition_name,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

# 23:40 on 1 March to 00:20 on 2 March UTC: one drive across two daily partitions.
DRIVE_START = datetime(2026, 3, 1, 23, 40, tzinfo=UTC)
DRIVE_FIXES = 601  # every 4 s for 40 minutes


def _ts(moment: datetime, extra_nanos: int = 0) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    stamp.nanos += extra_nanos
    return stamp


def _request(
    driver_id: str, start: datetime, end: datetime, page_size: int = 0, page_token: str = ""
) -> pb.GetDriverTrackRequest:
    return pb.GetDriverTrackRequest(
        driver_id=driver_id,
        start_time=_ts(start),
        end_time=_ts(end),
        page_size=page_size,
        page_token=page_token,
    )


def _reference_distance_m(points: list[tuple[float, float]]) -> float:
    """Great-circle path length by the Vincenty special case of the great-circle formula: a
    different formula from the service's haversine, equally exact on the sphere."""
    total = 0.0
    for (lat1, lng1), (lat2, lng2) in itertools.pairwise(points):
        p1, p2 = math.radians(lat1), math.radians(lat2)
        dl = math.radians(lng2 - lng1)
        y = math.hypot(
            math.cos(p2) * math.sin(dl),
            math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl),
        )
        x = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
        total += 6_371_008.8 * math.atan2(y, x)
    return total


def _drive(driver_id: str, start: datetime, count: int, seed: int) -> list[FixRow]:
    """A random walk near Berlin, one fix every 4 s, with varied optional fields."""
    rng = random.Random(seed)
    lat, lng = 52.52, 13.405
    rows = []
    for i in range(count):
        lat += rng.uniform(-3e-4, 3e-4)
        lng += rng.uniform(-3e-4, 3e-4)
        recorded = start + timedelta(seconds=4 * i, microseconds=rng.randrange(1_000_000))
        received = recorded + timedelta(milliseconds=150)
        rows.append(
            FixRow(driver_id, lat, lng, float(i % 360), i / 10, 5.0, recorded, i + 1, received)
        )
    return rows


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[HistoryStore]:
    history = HistoryStore(create_engine(database_url))
    yield history
    await history.dispose()


@pytest.fixture(scope="module")
async def drive(store: HistoryStore) -> list[FixRow]:
    """The main drive, stored shuffled, plus fixes of another driver and outside the range."""
    rows = _drive("track-1", DRIVE_START, DRIVE_FIXES, seed=11)
    shuffled = random.Random(3).sample(rows, len(rows))
    assert await store.insert_fixes(shuffled) == DRIVE_FIXES
    others = [
        *_drive("track-2", DRIVE_START, 50, seed=12),
        *_drive("track-1", DRIVE_START - timedelta(days=1), 5, seed=13),
        *_drive("track-1", DRIVE_START + timedelta(days=2), 5, seed=14),
    ]
    await store.insert_fixes(others)
    return rows


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[Any]:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


def _positions(response: pb.GetDriverTrackResponse) -> list[tuple[float, float]]:
    return [(p.position.latitude, p.position.longitude) for p in response.points]


async def test_track_across_two_partitions_is_ordered_with_its_distance(
    store: HistoryStore, drive: list[FixRow]
) -> None:
    assert {row.recorded_at.date() for row in drive} == {date(2026, 3, 1), date(2026, 3, 2)}
    end = DRIVE_START + timedelta(hours=1)
    response = await get_driver_track(
        store, _request("track-1", DRIVE_START, end, page_size=10_000)
    )
    assert [(p.recorded_at.ToDatetime(tzinfo=UTC), p.seq) for p in response.points] == [
        (row.recorded_at, row.seq) for row in drive
    ]
    expected = [(row.latitude, row.longitude) for row in drive]
    assert _positions(response) == expected
    assert response.distance_m == pytest.approx(_reference_distance_m(expected), rel=1e-9)
    assert response.distance_m > 1000  # a real drive, not a degenerate one
    geometry = json.loads(response.geojson)
    assert geometry["type"] == "LineString"
    assert geometry["coordinates"] == [[lng, lat] for lat, lng in expected]
    assert response.next_page_token == ""
    first = response.points[0]
    assert first.driver_id == "track-1"
    assert (first.heading_deg, first.speed_mps, first.accuracy_m) == (0.0, 0.0, 5.0)
    assert first.received_at.ToDatetime(tzinfo=UTC) == drive[0].received_at
    assert response.points[5].speed_mps == pytest.approx(0.5)


async def test_three_pages_give_the_same_points_and_total_distance(
    store: HistoryStore, drive: list[FixRow]
) -> None:
    end = DRIVE_START + timedelta(hours=1)
    whole = await get_driver_track(store, _request("track-1", DRIVE_START, end, 10_000))
    page_size = math.ceil(DRIVE_FIXES / 3)
    pages: list[pb.GetDriverTrackResponse] = []
    token = ""
    while True:
        page = await get_driver_track(
            store, _request("track-1", DRIVE_START, end, page_size, token)
        )
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    assert [len(p.points) for p in pages] == [201, 201, 199]
    assert [p for page in pages for p in page.points] == list(whole.points)
    assert math.fsum(p.distance_m for p in pages) == pytest.approx(whole.distance_m, rel=1e-12)
    # Each later page's line starts where the previous page ended, so the lines join.
    for before, after in itertools.pairwise(pages):
        first = json.loads(after.geojson)["coordinates"][0]
        last = before.points[-1].position
        assert first == [last.longitude, last.latitude]
        assert len(json.loads(after.geojson)["coordinates"]) == len(after.points) + 1


async def test_page_size_may_change_between_pages(store: HistoryStore, drive: list[FixRow]) -> None:
    end = DRIVE_START + timedelta(hours=1)
    first = await get_driver_track(store, _request("track-1", DRIVE_START, end, 10))
    rest = await get_driver_track(
        store, _request("track-1", DRIVE_START, end, 10_000, first.next_page_token)
    )
    assert len(first.points) + len(rest.points) == DRIVE_FIXES
    assert rest.points[0].seq == 11
    assert rest.next_page_token == ""


async def test_default_page_size_is_one_thousand(store: HistoryStore) -> None:
    start = datetime(2026, 4, 1, 6, 0, tzinfo=UTC)
    await store.insert_fixes(_drive("busy", start, 1_001, seed=5))
    end = start + timedelta(hours=2)
    first = await get_driver_track(store, _request("busy", start, end))
    assert len(first.points) == 1_000
    assert first.next_page_token
    last = await get_driver_track(store, _request("busy", start, end, 0, first.next_page_token))
    assert [p.seq for p in last.points] == [1_001]
    assert last.next_page_token == ""
    # A continuation page of one fix still draws the leg from the previous page's last fix.
    coordinates = json.loads(last.geojson)["coordinates"]
    assert len(coordinates) == 2
    assert last.distance_m > 0


async def test_range_bounds_are_half_open_to_the_microsecond(
    store: HistoryStore, drive: list[FixRow]
) -> None:
    fix = drive[100]
    at = fix.recorded_at
    just = await get_driver_track(store, _request("track-1", at, at + timedelta(microseconds=1)))
    assert [p.seq for p in just.points] == [fix.seq]
    # A single fix: distance 0 and a valid two-position LineString.
    assert just.distance_m == 0.0
    assert json.loads(just.geojson) == {
        "type": "LineString",
        "coordinates": [[fix.longitude, fix.latitude]] * 2,
    }
    excluded = await get_driver_track(store, _request("track-1", at - timedelta(seconds=1), at))
    assert fix.seq not in [p.seq for p in excluded.points]
    # One nanosecond after the fix excludes it; one nanosecond after as the end includes it.
    request = _request("track-1", at, at + timedelta(seconds=1))
    request.start_time.CopyFrom(_ts(at, 1))
    assert fix.seq not in [p.seq for p in (await get_driver_track(store, request)).points]
    request = _request("track-1", at - timedelta(seconds=1), at)
    request.end_time.CopyFrom(_ts(at, 1))
    assert fix.seq in [p.seq for p in (await get_driver_track(store, request)).points]


@pytest.mark.parametrize(
    ("driver_id", "start", "end"),
    [
        (
            "track-1",
            datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
            datetime(2026, 3, 1, 13, 0, tzinfo=UTC),
        ),
        ("nobody", DRIVE_START, DRIVE_START + timedelta(hours=1)),
        # No partition exists for these days at all.
        ("track-1", datetime(2031, 1, 1, tzinfo=UTC), datetime(2031, 2, 1, tzinfo=UTC)),
    ],
)
async def test_empty_range_is_an_empty_answer(
    store: HistoryStore, drive: list[FixRow], driver_id: str, start: datetime, end: datetime
) -> None:
    response = await get_driver_track(store, _request(driver_id, start, end))
    assert list(response.points) == []
    assert response.distance_m == 0.0
    assert json.loads(response.geojson) == {"type": "LineString", "coordinates": []}
    assert response.next_page_token == ""


async def test_token_from_another_request_or_garbage_is_invalid(
    store: HistoryStore, drive: list[FixRow]
) -> None:
    end = DRIVE_START + timedelta(hours=1)
    token = (
        await get_driver_track(store, _request("track-1", DRIVE_START, end, 5))
    ).next_page_token
    assert token
    for request in (
        _request("track-2", DRIVE_START, end, 5, token),
        _request("track-1", DRIVE_START, end + timedelta(seconds=1), 5, token),
        _request("track-1", DRIVE_START - timedelta(seconds=1), end, 5, token),
        _request("track-1", DRIVE_START, end, 5, token[:-4]),
        _request("track-1", DRIVE_START, end, 5, "garbage!"),
        _request("track-1", DRIVE_START, end, 5, token.upper()),
    ):
        with pytest.raises(InvalidArgument, match="page_token is not valid for this request"):
            await get_driver_track(store, request)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            pb.GetDriverTrackRequest(start_time=_ts(DRIVE_START), end_time=_ts(DRIVE_START)),
            "driver_id is required",
        ),
        (
            _request("bad id!", DRIVE_START, DRIVE_START + timedelta(hours=1)),
            "driver_id 'bad id!' is not valid",
        ),
        (
            pb.GetDriverTrackRequest(driver_id="d1", end_time=_ts(DRIVE_START)),
            "start_time is required",
        ),
        (
            pb.GetDriverTrackRequest(driver_id="d1", start_time=_ts(DRIVE_START)),
            "end_time is required",
        ),
        (_request("d1", DRIVE_START, DRIVE_START), "must be after start_time"),
        (_request("d1", DRIVE_START, DRIVE_START - timedelta(days=1)), "must be after start_time"),
        (
            _request("d1", DRIVE_START, DRIVE_START + timedelta(hours=1), -1),
            "page_size must not be negative",
        ),
        (_request("d1", DRIVE_START, DRIVE_START + timedelta(hours=1), 10_001), "at most 10,000"),
    ],
)
async def test_bad_arguments_are_invalid_argument_naming_the_field(
    store: HistoryStore, request_: pb.GetDriverTrackRequest, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await get_driver_track(store, request_)


def _scanned_relations(plan: Any) -> set[str]:
    found: set[str] = set()
    stack = [json.loads(plan)[0]["Plan"]]
    while stack:
        node = stack.pop()
        if "Relation Name" in node:
            found.add(node["Relation Name"])
        stack.extend(node.get("Plans", []))
    return found


async def test_page_queries_scan_only_the_partitions_in_range(store: HistoryStore, pg: Any) -> None:
    days = [date(2026, 5, d) for d in range(1, 8)]
    await store.ensure_partitions(days)
    start = datetime(2026, 5, 3, 12, 0, tzinfo=UTC)
    end = datetime(2026, 5, 5, 6, 0, tzinfo=UTC)
    plan = await pg.fetchval(f"EXPLAIN (FORMAT JSON) {SELECT_FIXES_PAGE}", "d1", start, end, 100)
    assert _scanned_relations(plan) == {partition_name(date(2026, 5, d)) for d in (3, 4, 5)}
    # A later page's cursor is its lower bound: the days before the cursor are pruned too.
    cursor = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    plan = await pg.fetchval(
        f"EXPLAIN (FORMAT JSON) {SELECT_FIXES_PAGE_AFTER}", "d1", cursor, end, cursor, 7, 100
    )
    assert _scanned_relations(plan) == {partition_name(date(2026, 5, d)) for d in (4, 5)}
