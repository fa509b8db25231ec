"""ListDriverTrips and GetTripSummary over real PostGIS: a scripted day with a ride, read through
a gRPC server with auth: trips, stops, ride cuts, pages, totals and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as pb_grpc
from services.auth.identity import Identity, Role
from services.domain.trip_ids import TripSpan, decode_trip_id
from services.domain.trips import Fix, RideSpan
from services.history.ride_spans import ride_spans
from services.history.store import FixRow, HistoryStore, create_engine
from tests.integration.geo_servicer import geo_stub
from tests.trip_days import Day, micros, moment

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

DRIVER = "trips-1"
T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
DAY_START, DAY_END = T0 - timedelta(hours=1), T0 + timedelta(hours=3)
AS_DRIVER = (("authorization", f"Bearer driver:{DRIVER}"),)
AS_OTHER = (("authorization", "Bearer driver:someone-else"),)
AS_OPS = (("authorization", "Bearer ops:ops-1"),)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def city_day(driver_seed: int = 1) -> Day:
    """The unit tests' day: stop, 5 km, stop, 3 km and a 2 min stand, 20 min gap, stop with a
    120 m move inside it, 2 km to the end of the data."""
    day = Day(52.52, 13.405, T0, seed=driver_seed)
    day.park(300).drive(5_000).park(600).turn(0.0).drive(3_000).park(120).gap(1_200)
    return day.park(300).drive(120, 3.0).park(300).turn(180.0).drive(2_000)


def rows(driver_id: str, fixes: list[Fix]) -> list[FixRow]:
    return [
        FixRow(
            driver_id,
            fix.latitude,
            fix.longitude,
            0.0,
            fix.speed_mps,
            5.0,
            moment(fix.micros),
            fix.seq,
            moment(fix.micros) + timedelta(milliseconds=200),
        )
        for fix in fixes
    ]


_RIDE = """
INSERT INTO rides (ride_id, rider_id, driver_id, state, pickup, dropoff, request_id, create_time)
VALUES ($1, 'rider-1', $2, $3, ST_MakePoint(13.4, 52.5)::geography,
        ST_MakePoint(13.41, 52.51)::geography, $1, $4)
"""
_EVENT = """
INSERT INTO ride_events (ride_id, from_state, to_state, party, event_time)
VALUES ($1, NULL, $2, 'PARTY_DRIVER', $3)
"""


async def add_ride(
    apg: Any, ride_id: str, driver_id: str, final: str, times: dict[str, datetime]
) -> None:
    created = min(times.values()) - timedelta(seconds=30)
    await apg.execute(_RIDE, ride_id, driver_id, final, created)
    for state, when in times.items():
        await apg.execute(_EVENT, ride_id, state, when)


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[HistoryStore]:
    history = HistoryStore(create_engine(database_url))
    day = city_day()
    # Stored shuffled, with another driver's day on top: order and selection are the store's.
    stored = rows(DRIVER, day.fixes)[::-1] + rows("trips-2", city_day(2).fixes)
    assert await history.insert_fixes(stored) == len(stored)
    async with history.connection() as apg:
        # Assigned while parked, picked up 100 s into the 3 km drive, completed 100 s before
        # the drive ends: that trip becomes three.
        await add_ride(
            apg,
            "ride-1",
            DRIVER,
            "RIDE_STATE_COMPLETED",
            {
                "RIDE_STATE_DRIVER_ASSIGNED": at(1_000),
                "RIDE_STATE_IN_PROGRESS": at(1_500),
                "RIDE_STATE_COMPLETED": at(1_700),
            },
        )
        # Another driver's ride, during the first drive: it must not cut this driver's trips.
        await add_ride(
            apg,
            "ride-2",
            "trips-2",
            "RIDE_STATE_CANCELLED",
            {"RIDE_STATE_DRIVER_ASSIGNED": at(400), "RIDE_STATE_CANCELLED": at(500)},
        )
    yield history
    await history.dispose()


def _verify(header: str | None) -> Identity:
    role, _, sub = (header or "").removeprefix("Bearer ").partition(":")
    return Identity(sub, Role.OPS if role == "ops" else Role.DRIVER)


@pytest.fixture(scope="module")
async def stub(store: HistoryStore) -> AsyncIterator[pb_grpc.GeoQueryServiceAsyncStub]:
    # Only the history RPCs are called: the servicer's other parts are left out.
    async with geo_stub(_verify, history=store) as stub:
        yield stub


def ts(moment_: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment_)
    return stamp


def trips_request(
    start: datetime = DAY_START, end: datetime = DAY_END, **fields: Any
) -> pb.ListDriverTripsRequest:
    return pb.ListDriverTripsRequest(
        driver_id=fields.pop("driver_id", DRIVER), start_time=ts(start), end_time=ts(end), **fields
    )


def times(message: pb.Trip | pb.Stop) -> tuple[datetime, datetime]:
    return message.start_time.ToDatetime(tzinfo=UTC), message.end_time.ToDatetime(tzinfo=UTC)


async def all_pages(
    stub: pb_grpc.GeoQueryServiceAsyncStub, page_size: int
) -> tuple[list[pb.Trip], list[pb.Stop], int]:
    found_trips: list[pb.Trip] = []
    found_stops: list[pb.Stop] = []
    token = ""
    for pages in range(1, 100):
        page = await stub.ListDriverTrips(
            trips_request(page_size=page_size, page_token=token), metadata=AS_DRIVER
        )
        assert len(page.trips) <= page_size
        found_trips += page.trips
        found_stops += page.stops
        token = page.next_page_token
        if not token:
            return found_trips, found_stops, pages
    raise AssertionError("paging did not end")


async def test_the_days_trips_and_stops_with_the_ride_cutting_its_trip(
    stub: pb_grpc.GeoQueryServiceAsyncStub,
) -> None:
    page = await stub.ListDriverTrips(trips_request(), metadata=AS_DRIVER)
    assert [(times(t), t.ride_id) for t in page.trips] == [
        ((at(300), at(804)), ""),
        ((at(1_400), at(1_500)), "ride-1"),  # to the pickup
        ((at(1_500), at(1_700)), "ride-1"),  # with the rider
        ((at(1_700), at(1_820)), ""),  # the rest, cut by the data gap
        ((at(3_660), at(3_860)), ""),
    ]
    assert [times(s) for s in page.stops] == [
        (at(0), at(300)),
        (at(804), at(1_400)),
        (at(3_024), at(3_660)),
    ]
    first = page.trips[0]
    assert first.distance_m == pytest.approx(5_000, abs=8)
    assert first.duration.ToSeconds() == 504
    assert first.moving_time.ToSeconds() == 500
    assert first.max_speed_mps == pytest.approx(10, abs=0.5)
    assert first.fix_count == 127
    assert sum(t.distance_m for t in page.trips[1:4]) == pytest.approx(3_000, abs=8)
    assert decode_trip_id(first.trip_id) == TripSpan(DRIVER, at(300), at(804))
    assert page.next_page_token == ""


async def test_pages_of_any_size_give_the_same_trips_and_stops(
    stub: pb_grpc.GeoQueryServiceAsyncStub,
) -> None:
    whole = await stub.ListDriverTrips(trips_request(), metadata=AS_DRIVER)
    for size in (1, 2, 3):
        found_trips, found_stops, pages = await all_pages(stub, size)
        assert found_trips == list(whole.trips)
        assert found_stops == list(whole.stops)
        assert pages == -(-len(whole.trips) // size)


async def test_the_summary_adds_up_the_trips_and_stops(
    stub: pb_grpc.GeoQueryServiceAsyncStub,
) -> None:
    request = pb.GetTripSummaryRequest(
        driver_id=DRIVER, start_time=ts(DAY_START), end_time=ts(DAY_END)
    )
    summary = await stub.GetTripSummary(request, metadata=AS_OPS)
    assert (summary.driver_id, summary.trip_count, summary.stop_count) == (DRIVER, 5, 3)
    assert summary.fix_count == len(city_day().fixes)
    assert summary.distance_m == pytest.approx(10_000, abs=20)
    assert summary.driving_time.ToSeconds() == 504 + 420 + 200
    assert summary.stopped_time.ToSeconds() == 300 + 596 + 636
    assert summary.moving_time.ToSeconds() == pytest.approx(500 + 300 + 200, abs=1)
    assert summary.average_speed_mps == pytest.approx(summary.distance_m / 1_124)
    assert summary.max_speed_mps == pytest.approx(10, abs=0.5)


async def test_a_range_ending_inside_a_trip_ends_it_at_the_last_fix_inside(
    stub: pb_grpc.GeoQueryServiceAsyncStub,
) -> None:
    page = await stub.ListDriverTrips(
        trips_request(end=at(600) + timedelta(microseconds=1)), metadata=AS_DRIVER
    )
    assert [times(t) for t in page.trips] == [(at(300), at(600))]
    assert page.trips[0].distance_m == pytest.approx(3_000, abs=8)


async def test_a_range_without_fixes_is_empty(stub: pb_grpc.GeoQueryServiceAsyncStub) -> None:
    page = await stub.ListDriverTrips(
        trips_request(DAY_END, DAY_END + timedelta(days=1)), metadata=AS_DRIVER
    )
    assert (list(page.trips), list(page.stops), page.next_page_token) == ([], [], "")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (trips_request(driver_id=""), "driver_id"),
        (trips_request(DAY_END, DAY_START), "end_time"),
        (trips_request(DAY_START, DAY_START + timedelta(days=31, seconds=1)), "31 days"),
        (pb.ListDriverTripsRequest(driver_id=DRIVER, end_time=ts(DAY_END)), "start_time"),
        (trips_request(page_size=-1), "page_size"),
        (trips_request(page_token="not-a-token"), "page_token"),
    ],
)
async def test_bad_requests_name_the_field(
    stub: pb_grpc.GeoQueryServiceAsyncStub, request_: pb.ListDriverTripsRequest, field: str
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.ListDriverTrips(request_, metadata=AS_OPS)  # a driver is refused first
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")


async def test_a_token_is_bound_to_its_range(stub: pb_grpc.GeoQueryServiceAsyncStub) -> None:
    first = await stub.ListDriverTrips(trips_request(page_size=1), metadata=AS_DRIVER)
    assert first.next_page_token
    moved = trips_request(DAY_START + timedelta(seconds=1), page_token=first.next_page_token)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.ListDriverTrips(moved, metadata=AS_DRIVER)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (caught.value.details() or "")


async def test_another_driver_may_not_read_the_trips(
    stub: pb_grpc.GeoQueryServiceAsyncStub,
) -> None:
    summary = pb.GetTripSummaryRequest(
        driver_id=DRIVER, start_time=ts(DAY_START), end_time=ts(DAY_END)
    )
    for call in (
        stub.ListDriverTrips(trips_request(), metadata=AS_OTHER),
        stub.GetTripSummary(summary, metadata=AS_OTHER),
    ):
        with pytest.raises(aio.AioRpcError) as caught:
            await call
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_a_database_that_is_away_is_unavailable() -> None:
    away = HistoryStore(create_engine("postgresql+asyncpg://postgres@127.0.0.1:9/none"))
    try:
        async with geo_stub(_verify, history=away) as stub:
            with pytest.raises(aio.AioRpcError) as caught:
                await stub.ListDriverTrips(trips_request(), metadata=AS_DRIVER)
    finally:
        await away.dispose()
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "PostgreSQL" in (caught.value.details() or "")


async def test_ride_spans_are_the_drivers_rides_that_overlap_the_range(
    store: HistoryStore,
) -> None:
    driver = "spans-1"
    async with store.connection() as apg:
        for ride_id, final, times_ in (
            ("before", "RIDE_STATE_COMPLETED", (at(-900), at(-800), at(-700))),
            ("across-start", "RIDE_STATE_COMPLETED", (at(-100), at(50), at(200))),
            ("open", "RIDE_STATE_IN_PROGRESS", (at(1_000), at(1_100), None)),
            ("cancelled", "RIDE_STATE_CANCELLED", (at(2_000), None, at(2_100))),
            ("after", "RIDE_STATE_COMPLETED", (at(9_000), at(9_100), at(9_200))),
        ):
            assigned, started, ended = times_
            events = {"RIDE_STATE_DRIVER_ASSIGNED": assigned}
            if started is not None:
                events["RIDE_STATE_IN_PROGRESS"] = started
            if ended is not None:
                events[final] = ended
            await add_ride(apg, f"{driver}-{ride_id}", driver, final, events)
    spans = await ride_spans(store, driver, at(0), at(3_600))
    us = micros
    assert spans == [
        RideSpan(f"{driver}-across-start", us(at(-100)), us(at(50)), us(at(200))),
        RideSpan(f"{driver}-open", us(at(1_000)), us(at(1_100)), None),
        RideSpan(f"{driver}-cancelled", us(at(2_000)), None, us(at(2_100))),
    ]
