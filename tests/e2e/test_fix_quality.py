"""Late and uploaded fixes through the whole mesh: stored, but no zone event, and the live
position never goes back."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2 as lpb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from services.history.store import HistoryStore
from tests.e2e.clients import DriverStream, Messages, fix, new_driver_id
from tests.e2e.test_geo import _inside_until_entered, _square
from tests.tokens import Metadata

pytestmark = pytest.mark.e2e

CENTRE = (48.137, 11.575)
AWAY = (48.187, 11.575)  # 5.5 km north


async def _first_event_of(watch: Messages, driver_id: str) -> pb.GeofenceEvent:
    while True:
        event: pb.GeofenceEvent = (await watch.next()).event
        if event.driver_id == driver_id:
            return event


async def test_late_and_uploaded_fixes_inside_a_zone_fire_nothing_and_are_stored(
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    history: HistoryStore,
    as_driver: Callable[[str], Metadata],
) -> None:
    tag = new_driver_id("late")
    zone = pb.Geofence(
        display_name="Marienplatz", geojson=_square(*CENTRE, 0.005), labels={"t": tag}
    )
    await geo.CreateGeofence(pb.CreateGeofenceRequest(geofence=zone))
    watch = Messages(geo.WatchGeofenceEvents(pb.WatchGeofenceEventsRequest(labels={"t": tag})))
    await _inside_until_entered(location, as_driver, watch, CENTRE, 0)  # the watch is live
    now = time.time()

    # A driver outside the zone empties a 10-minute-old buffer on its stream: fixes inside it.
    late_id = new_driver_id("late")
    late = DriverStream(location, as_driver(late_id))
    late.send(fix(late_id, 1, *AWAY, recorded_s=now - 2))
    late.send(fix(late_id, 2, *CENTRE, recorded_s=now - 600))
    late.send(fix(late_id, 3, *CENTRE, recorded_s=now - 596))
    await late.wait_for(lambda: late.durable_seq >= 3)
    current = await location.GetDriverLocation(lpb.GetDriverLocationRequest(driver_id=late_id))
    assert current.location.seq == 1  # the live position never went back in time

    # Another uploads fixes inside the zone it took while offline.
    upload_id = new_driver_id("upload")
    buffered = [fix(upload_id, n, *CENTRE, recorded_s=now - 900 + n) for n in (1, 2, 3)]
    answer = await location.UploadLocations(
        lpb.UploadLocationsRequest(updates=buffered), metadata=as_driver(upload_id)
    )
    assert answer.stored_count == 3

    # Each then drives in live. Events of one driver come in the order of its fixes, so each
    # one's first event would be an ENTER of a late or uploaded fix if those fired any.
    late.send(fix(late_id, 4, *CENTRE))
    uploader = DriverStream(location, as_driver(upload_id))
    uploader.send(fix(upload_id, 10, *CENTRE))
    for driver_id in (late_id, upload_id):
        event = await _first_event_of(watch, driver_id)
        assert event.transition == pb.GEOFENCE_TRANSITION_ENTER
        assert event.event_time.ToSeconds() >= now - 1, event
    await late.wait_for(lambda: late.durable_seq >= 4)
    assert await history.count_fixes(late_id) == 4
    assert await history.count_fixes(upload_id) == 3 + (uploader.durable_seq == 10)
    watch.cancel()
    for stream in (late, uploader):
        stream.close()
        await stream.reader
