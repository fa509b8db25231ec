"""ListDriverTrips and GetTripSummary are served through Envoy, to the driver and to no one else."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc import aio

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from services.history.store import FixRow, HistoryStore
from tests.e2e.clients import new_driver_id
from tests.tokens import Metadata
from tests.trip_days import Day, moment

pytestmark = pytest.mark.e2e


async def test_a_drivers_trips_and_summary_through_envoy(
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    history: HistoryStore,
    as_driver: Callable[[str], Metadata],
) -> None:
    driver_id = new_driver_id("trips")
    # Recent, so partition upkeep keeps it: park, drive 4 km, park.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    day = Day(-23.55, -46.63, start).park(300).drive(4_000).park(300)
    await history.insert_fixes(
        [
            FixRow(
                driver_id,
                f.latitude,
                f.longitude,
                0,
                f.speed_mps,
                5,
                moment(f.micros),
                f.seq,
                moment(f.micros),
            )
            for f in day.fixes
        ]
    )
    request = pb.ListDriverTripsRequest(driver_id=driver_id)
    request.start_time.FromDatetime(start - timedelta(minutes=1))
    request.end_time.FromDatetime(start + timedelta(hours=1))
    summary_request = pb.GetTripSummaryRequest(
        driver_id=driver_id, start_time=request.start_time, end_time=request.end_time
    )
    page = pb.ListDriverTripsResponse()
    for _ in range(200):  # reads may go to a replica that is a moment behind: poll a while
        page = await geo.ListDriverTrips(request, metadata=as_driver(driver_id))
        if len(page.stops) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(page.trips) == 1
    assert page.trips[0].distance_m == pytest.approx(4_000, abs=8)
    assert page.trips[0].start_time.ToDatetime(tzinfo=UTC) == start + timedelta(seconds=300)
    summary = await geo.GetTripSummary(summary_request, metadata=as_driver(driver_id))
    assert (summary.trip_count, summary.stop_count, summary.fix_count) == (1, 2, len(day.fixes))

    for call in (
        geo.ListDriverTrips(request, metadata=as_driver("someone-else")),
        geo.GetTripSummary(summary_request, metadata=as_driver("someone-else")),
    ):
        with pytest.raises(aio.AioRpcError) as caught:
            await call
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
