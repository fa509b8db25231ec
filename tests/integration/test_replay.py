"""ReplayFleet over real PostGIS through a real grpc server: exactly the fixes in the box, in time
order, once each, across a partition boundary and the antimeridian; pacing; ticks; errors; and
PostgreSQL going away mid-replay."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from sqlalchemy.engine import make_url

from ridemesh.v1 import common_pb2
from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as pb_grpc
from services.auth.identity import Identity, Role
from services.domain.area import Box
from services.history.box_reads import (
    SELECT_BOX_PAGE,
    BoxQuery,
    box_fix_pages,
    geocentric_cover_wkt,
)
from services.history.migrate import run_migrations
from services.history.store import FixRow, HistoryStore, create_engine
from services.ops.mesh.postgres_server import PostgresServer
from tests.integration.geo_servicer import geo_stub

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

BERLIN = Box(52.50, 13.35, 52.55, 13.45)
FIJI = Box(-17.0, 179.0, -16.0, -179.0)  # across the antimeridian
# A wide box: great-circle edges between its corners bulge north of its southern parallel.
WIDE = Box(10.0, -60.0, 20.0, 60.0)
MIDNIGHT = datetime(2026, 3, 2, tzinfo=UTC)  # the boundary between two daily partitions
OPS = (("authorization", "Bearer ops"),)
RIDER = (("authorization", "Bearer rider"),)


def _fix(driver: str, lat: float, lng: float, at: datetime, seq: int) -> FixRow:
    return FixRow(driver, lat, lng, 90.0, 8.0, 5.0, at, seq, at + timedelta(milliseconds=200))


def _drive(driver: str, box: Box, start: datetime, count: int, seed: int) -> list[FixRow]:
    """A walk that wanders in and out of `box` (a margin of half its size on each side), one
    fix a second with a random sub-second part; some fixes share an instant across drivers."""
    rng = random.Random(seed)
    span = box.lng_span()
    rows = []
    for i in range(count):
        lat = rng.uniform(box.south - (box.north - box.south) / 2, box.north + 0.02)
        lng = box.west - span / 2 + rng.uniform(0, 2 * span)
        lng = lng - 360 if lng > 180 else lng + 360 if lng < -180 else lng
        at = start + timedelta(seconds=i, microseconds=rng.choice((0, rng.randrange(10**6))))
        rows.append(_fix(driver, max(-90.0, min(90.0, lat)), lng, at, i + 1))
    return rows


def _expected(rows: list[FixRow], box: Box, start: datetime, end: datetime) -> list[FixRow]:
    inside = [r for r in rows if box.contains(r.latitude, r.longitude) and start <= r.recorded_at]
    inside = [r for r in inside if r.recorded_at < end]
    return sorted(inside, key=lambda r: (r.recorded_at, r.driver_id.encode(), r.seq))


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[HistoryStore]:
    history = HistoryStore(create_engine(database_url))
    yield history
    await history.dispose()


@pytest.fixture(scope="module")
async def stored(store: HistoryStore) -> list[FixRow]:
    """Drivers around Berlin and Fiji from 23:58 to 00:02 across midnight, and edge cases."""
    start = MIDNIGHT - timedelta(minutes=2)
    rows = []
    for n in range(6):
        rows += _drive(f"berlin-{n}", BERLIN, start, 240, seed=n)
        rows += _drive(f"fiji-{n}", FIJI, start, 240, seed=100 + n)
    # On the southern edge of the wide box, half-way along it: inside the rectangle, outside
    # the great-circle polygon through its corners. And just outside it, south of the edge.
    rows.append(_fix("edge-in", 10.0, 0.0, MIDNIGHT, 1))
    rows.append(_fix("edge-out", 9.9999, 0.0, MIDNIGHT, 1))
    # Three drivers at one instant, named so byte order differs from a locale's order.
    rows += [_fix(name, 52.52, 13.40, MIDNIGHT, 999) for name in ("b-2", "B-1", "a-3")]
    assert await store.insert_fixes(random.Random(7).sample(rows, len(rows))) == len(rows)
    return rows


@pytest.fixture
async def stub(store: HistoryStore) -> AsyncIterator[pb_grpc.GeoQueryServiceAsyncStub]:
    async with replay_server(store) as geo:
        yield geo


def _verify(header: str | None) -> Identity:
    if header and "ops" in header:
        return Identity("ops-1", Role.OPS)
    return Identity("r-1", Role.RIDER)


def replay_server(history: HistoryStore) -> Any:
    """A real GeoQuery server whose only real part is the history store: replay must not need
    Redis, the live store or the event feed (they are None here)."""
    return geo_stub(_verify, history=history)


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _request(box: Box, start: datetime, end: datetime, speed: float) -> pb.ReplayFleetRequest:
    return pb.ReplayFleetRequest(
        bounds=common_pb2.BoundingBox(
            south_west=common_pb2.LatLng(latitude=box.south, longitude=box.west),
            north_east=common_pb2.LatLng(latitude=box.north, longitude=box.east),
        ),
        start_time=_ts(start),
        end_time=_ts(end),
        speed=speed,
    )


Received = list[tuple[float, pb.ReplayFleetResponse]]


async def _replay(
    geo: pb_grpc.GeoQueryServiceAsyncStub, request: pb.ReplayFleetRequest
) -> Received:
    """Every message with the wall seconds since the call was made."""
    began = time.monotonic()
    received = []
    async for response in geo.ReplayFleet(request, metadata=OPS):
        received.append((time.monotonic() - began, response))
    return received


def _keys(received: Received) -> list[tuple[str, int, datetime]]:
    return [
        (r.location.driver_id, r.location.seq, r.location.recorded_at.ToDatetime(tzinfo=UTC))
        for _, r in received
        if r.HasField("location")
    ]


def _row_keys(rows: list[FixRow]) -> list[tuple[str, int, datetime]]:
    return [(r.driver_id, r.seq, r.recorded_at) for r in rows]


@pytest.mark.parametrize("box", [BERLIN, FIJI], ids=["berlin", "antimeridian"])
async def test_exactly_the_fixes_in_the_box_in_order_across_midnight(
    stub: pb_grpc.GeoQueryServiceAsyncStub, stored: list[FixRow], box: Box
) -> None:
    start, end = MIDNIGHT - timedelta(seconds=90), MIDNIGHT + timedelta(seconds=90)
    expected = _expected(stored, box, start, end)
    assert {r.recorded_at.date() for r in expected} == {date_before(), MIDNIGHT.date()}
    assert len(expected) > 200
    received = await _replay(stub, _request(box, start, end, speed=600))
    assert _keys(received) == _row_keys(expected)
    for wall_s, response in received:  # never before the clock reaches the fix
        if response.HasField("location"):
            offset = response.location.recorded_at.ToDatetime(tzinfo=UTC) - start
            assert wall_s >= offset.total_seconds() / 600
    times = [r.replay_time.ToDatetime(tzinfo=UTC) for _, r in received]
    assert times == sorted(times)
    assert times[-1] == end  # the last message is the clock at the end of the range


def date_before() -> Any:
    return (MIDNIGHT - timedelta(days=1)).date()


async def test_a_fix_on_the_edge_of_a_wide_box_is_in_and_one_beside_it_is_out(
    stub: pb_grpc.GeoQueryServiceAsyncStub, stored: list[FixRow]
) -> None:
    window = _request(WIDE, MIDNIGHT - timedelta(seconds=1), MIDNIGHT + timedelta(seconds=1), 100)
    assert [key[0] for key in _keys(await _replay(stub, window))] == ["edge-in"]


async def test_fixes_at_one_instant_come_in_byte_order_of_driver_id(
    stub: pb_grpc.GeoQueryServiceAsyncStub, stored: list[FixRow]
) -> None:
    request = _request(BERLIN, MIDNIGHT, MIDNIGHT + timedelta(milliseconds=1), 1)
    same = [key[0] for key in _keys(await _replay(stub, request)) if key[1] == 999]
    assert same == ["B-1", "a-3", "b-2"]


@pytest.mark.parametrize("page_size", [2, 7])
async def test_small_pages_give_every_fix_once_in_order(
    store: HistoryStore, stored: list[FixRow], page_size: int
) -> None:
    # Page size 2 splits the three fixes recorded at one instant (midnight) across pages.
    query = BoxQuery(BERLIN, MIDNIGHT - timedelta(minutes=3), MIDNIGHT + timedelta(minutes=3))
    pages = [page async for page in box_fix_pages(store, query, page_size=page_size)]
    assert all(0 < len(page) <= page_size for page in pages)
    rows = [row for page in pages for row in page]
    assert _row_keys(rows) == _row_keys(_expected(stored, BERLIN, query.start, query.end))


async def test_ticks_move_the_clock_across_a_quiet_span(
    stub: pb_grpc.GeoQueryServiceAsyncStub, store: HistoryStore
) -> None:
    quiet = datetime(2026, 3, 5, 8, tzinfo=UTC)
    fixes = [_fix("quiet", 52.52, 13.4, quiet + timedelta(seconds=s), s + 1) for s in (0, 3)]
    await store.insert_fixes(fixes)
    received = await _replay(stub, _request(BERLIN, quiet, quiet + timedelta(seconds=4), 1))
    kinds = ["fix" if r.HasField("location") else "tick" for _, r in received]
    first, second = kinds.index("fix"), len(kinds) - 1 - kinds[::-1].index("fix")
    assert kinds.count("fix") == 2
    between = [r.replay_time.ToDatetime(tzinfo=UTC) for _, r in received[first + 1 : second]]
    assert between, "no tick in three quiet seconds"
    assert all(quiet < t < quiet + timedelta(seconds=3) for t in between)
    assert received[second][0] >= 3.0  # the second fix waited for its time


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda r: r.ClearField("bounds"), "bounds"),
        (lambda r: setattr(r.bounds.south_west, "latitude", 95.0), "latitude"),
        (lambda r: r.ClearField("start_time"), "start_time"),
        (lambda r: r.end_time.CopyFrom(r.start_time), "end_time"),
        (lambda r: r.end_time.CopyFrom(_ts(MIDNIGHT + timedelta(days=2))), "24 hours"),
        (lambda r: setattr(r, "speed", -2.0), "speed"),
        (lambda r: setattr(r, "speed", float("nan")), "speed"),
        (lambda r: setattr(r, "speed", 7200.0), "speed"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    stub: pb_grpc.GeoQueryServiceAsyncStub, mutate: Any, words: str
) -> None:
    request = _request(BERLIN, MIDNIGHT, MIDNIGHT + timedelta(minutes=1), 10)
    mutate(request)
    with pytest.raises(aio.AioRpcError) as caught:
        await _replay(stub, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (caught.value.details() or "")


async def test_a_rider_may_not_replay_the_fleet(stub: pb_grpc.GeoQueryServiceAsyncStub) -> None:
    request = _request(BERLIN, MIDNIGHT, MIDNIGHT + timedelta(minutes=1), 10)
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in stub.ReplayFleet(request, metadata=RIDER):
            pass
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_plan_uses_the_location_and_time_indexes_of_one_partition(
    store: HistoryStore, database_url: str
) -> None:
    day = datetime(2026, 4, 10, tzinfo=UTC)
    await store.ensure_partitions([day.date()])
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    pg = await asyncpg.connect(dsn)
    try:
        # 300,000 fixes of 500 drivers across a day over ~50 x 50 km, written in time order
        # as the persister writes them, then summarised as autovacuum would.
        await pg.execute(
            """
            INSERT INTO driver_locations (driver_id, location, recorded_at, seq, received_at)
            SELECT 'p' || d, ST_SetSRID(ST_MakePoint(
                       13.1 + ((d * 7919 + s * 13) % 1000) / 1000.0 * 0.6,
                       52.3 + ((d * 104729 + s * 31) % 1000) / 1000.0 * 0.4), 4326)::geography,
                   $1::timestamptz + make_interval(secs => s * 144 + d % 144), s, $1::timestamptz
            FROM generate_series(0, 599) AS s, generate_series(1, 500) AS d ORDER BY s, d
            """,
            day,
        )
        await pg.execute("VACUUM ANALYZE driver_locations")
        lo, hi = day + timedelta(hours=10), day + timedelta(hours=10, minutes=5)
        args = [lo, hi, geocentric_cover_wkt(BERLIN), *(BERLIN.south, BERLIN.north)]
        args += [BERLIN.west, BERLIN.east, 1000]
        plan = await pg.fetchval(f"EXPLAIN (FORMAT JSON) {SELECT_BOX_PAGE[(False, False)]}", *args)
    finally:
        await pg.close()
    nodes = list(_nodes(_plan_root(plan)))
    scanned = {str(node["Relation Name"]) for node in nodes if "Relation Name" in node}
    indexes = {str(node["Index Name"]) for node in nodes if "Index Name" in node}
    assert scanned == {"driver_locations_p20260410"}  # one partition, the others pruned
    assert any("location" in name for name in indexes), indexes
    assert any("recorded_at" in name for name in indexes), indexes


def _plan_root(plan: Any) -> dict[str, Any]:
    document = json.loads(plan) if isinstance(plan, str) else plan
    return cast(dict[str, Any], document[0]["Plan"])


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


async def test_postgres_going_away_mid_replay_is_unavailable_naming_it(
    tmp_path: Path,
) -> None:
    with PostgresServer(tmp_path / "pg" / "data", fsync=False) as server:
        await asyncio.to_thread(run_migrations, server.url)
        history = HistoryStore(create_engine(server.url))
        try:
            start = datetime(2026, 3, 7, 9, tzinfo=UTC)
            rows = [
                _fix(f"d{n}", 52.52, 13.40, start + timedelta(milliseconds=10 * i), i + 1)
                for n in range(4)
                for i in range(5_000)
            ]
            await history.insert_fixes(rows)
            request = _request(BERLIN, start, start + timedelta(seconds=50), speed=5)
            async with replay_server(history) as geo:
                got: list[int] = []
                with pytest.raises(aio.AioRpcError) as caught:
                    await _stopping_after_the_first_fix(geo, request, server, got)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "PostgreSQL" in (caught.value.details() or "")
            assert 0 < len(got) < len(rows)
        finally:
            await history.dispose()


async def _stopping_after_the_first_fix(
    geo: pb_grpc.GeoQueryServiceAsyncStub,
    request: pb.ReplayFleetRequest,
    server: PostgresServer,
    got: list[int],
) -> None:
    async for response in geo.ReplayFleet(request, metadata=OPS):
        if response.HasField("location"):
            got.append(response.location.seq)
            if len(got) == 1:
                server.stop()  # blocks this loop too, so the server reads nothing meanwhile


async def test_a_client_that_stops_reading_for_a_while_still_gets_every_fix_in_order(
    stub: pb_grpc.GeoQueryServiceAsyncStub, store: HistoryStore
) -> None:
    start = datetime(2026, 3, 6, 14, tzinfo=UTC)
    rows = [
        _fix(f"slow-{n}", 52.52, 13.40, start + timedelta(milliseconds=7 * i), i + 1)
        for n in range(3)
        for i in range(1_500)
    ]
    await store.insert_fixes(rows)
    call = stub.ReplayFleet(
        _request(BERLIN, start, start + timedelta(seconds=11), speed=3600), metadata=OPS
    )
    first = await call.read()
    await asyncio.sleep(1.0)  # not reading: the replay's clock runs past every fix meanwhile
    received: Received = [(0.0, cast(pb.ReplayFleetResponse, first))]
    while isinstance(message := await call.read(), pb.ReplayFleetResponse):
        received.append((0.0, message))
    end = start + timedelta(seconds=11)
    assert _keys(received) == _row_keys(_expected(rows, BERLIN, start, end))
