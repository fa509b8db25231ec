"""GeoQueryService through Envoy, fed by drivers streaming to LocationService as real apps do."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1.common_pb2 import BoundingBox, LatLng
from services.domain.geodesy import haversine_m
from tests.e2e.clients import DriverStream, Messages, collect, fix, new_driver_id
from tests.e2e.conftest import status_of
from tests.tokens import Metadata

pytestmark = pytest.mark.e2e


async def _place(
    location: location_grpc.LocationServiceAsyncStub,
    points: dict[str, tuple[float, float]],
    as_driver: Callable[[str], Metadata],
) -> None:
    """Each driver sends one fix at its point through Envoy and waits until it is live."""
    streams = []
    for driver_id, (lat, lng) in points.items():
        stream = DriverStream(location, as_driver(driver_id))
        stream.send(fix(driver_id, 1, lat, lng))
        streams.append(stream)
    for stream in streams:
        await stream.wait_for(lambda s=stream: s.accepted_seq == 1)
        stream.close()
        await stream.reader


async def test_nearby_drivers_nearest_first_in_metres(
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    as_driver: Callable[[str], Metadata],
) -> None:
    centre = (64.1466, -21.9426)  # Reykjavík: far from the other tests' drivers, high latitude
    offsets = [0.001, 0.004, 0.002, 0.03, 0.2]
    points = {new_driver_id("near"): (centre[0] + d, centre[1] + d) for d in offsets}
    await _place(location, points, as_driver)

    request = pb.SearchNearbyDriversRequest(
        center=LatLng(latitude=centre[0], longitude=centre[1]), radius_m=5_000, max_results=10
    )
    response = await geo.SearchNearbyDrivers(request)
    expected = sorted(
        (haversine_m(*centre, lat, lng), driver_id)
        for driver_id, (lat, lng) in points.items()
        if haversine_m(*centre, lat, lng) <= 5_000
    )
    assert [n.location.driver_id for n in response.drivers] == [d for _, d in expected]
    for nearby, (distance, _) in zip(response.drivers, expected, strict=True):
        assert nearby.distance_m == pytest.approx(distance, abs=0.01)
        assert nearby.age.ToMilliseconds() >= 0

    too_far = pb.SearchNearbyDriversRequest(center=request.center, radius_m=60_000)
    with pytest.raises(aio.AioRpcError) as error:
        await geo.SearchNearbyDrivers(too_far)
    assert status_of(error.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "50000" in (error.value.details() or "").replace(",", "")


def _square(lat: float, lng: float, half: float) -> str:
    ring = [
        [lng - half, lat - half],
        [lng + half, lat - half],
        [lng + half, lat + half],
        [lng - half, lat + half],
        [lng - half, lat - half],
    ]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


async def test_geofence_crud_and_check_point(geo: geo_grpc.GeoQueryServiceAsyncStub) -> None:
    tag = new_driver_id("zone")
    created = await geo.CreateGeofence(
        pb.CreateGeofenceRequest(
            geofence=pb.Geofence(
                display_name="Airport", geojson=_square(13.2, 77.7, 0.01), labels={"t": tag}
            )
        )
    )
    zone_id = created.geofence.geofence_id
    assert zone_id
    got = await geo.GetGeofence(pb.GetGeofenceRequest(geofence_id=zone_id))
    assert got.geofence.display_name == "Airport"
    listed = await geo.ListGeofences(pb.ListGeofencesRequest(filter=f"t={tag}"))
    assert [g.geofence_id for g in listed.geofences] == [zone_id]

    inside = await geo.CheckPoint(pb.CheckPointRequest(point=LatLng(latitude=13.2, longitude=77.7)))
    assert zone_id in [g.geofence_id for g in inside.geofences]
    outside = await geo.CheckPoint(
        pb.CheckPointRequest(point=LatLng(latitude=13.3, longitude=77.7))
    )
    assert zone_id not in [g.geofence_id for g in outside.geofences]

    await geo.DeleteGeofence(pb.DeleteGeofenceRequest(geofence_id=zone_id))
    with pytest.raises(aio.AioRpcError) as gone:
        await geo.GetGeofence(pb.GetGeofenceRequest(geofence_id=zone_id))
    assert status_of(gone.value) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("geojson", "words"),
    [
        ('{"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,1]]]}', "not closed"),
        ('{"type": "Polygon", "coordinates": [[[0,0],[1,0],[0,0]]]}', "4"),
        ('{"type": "Polygon", "coordinates": [[[0,0],[1,1],[1,0],[0,1],[0,0]]]}', "ntersection"),
        ('{"type": "Polygon", "coordinates": [[[0,0],[200,0],[1,1],[0,0]]]}', "longitude"),
        ('{"type": "Point", "coordinates": [0,0]}', "Polygon"),
        ("not json", "JSON"),
    ],
)
async def test_invalid_geometry_is_invalid_argument(
    geo: geo_grpc.GeoQueryServiceAsyncStub, geojson: str, words: str
) -> None:
    request = pb.CreateGeofenceRequest(geofence=pb.Geofence(display_name="bad", geojson=geojson))
    with pytest.raises(aio.AioRpcError) as error:
        await geo.CreateGeofence(request)
    assert status_of(error.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (error.value.details() or "")


async def test_driver_crossing_a_zone_yields_one_enter_then_one_exit(
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    as_driver: Callable[[str], Metadata],
) -> None:
    # Two GeoQuery replicas run behind Envoy; each sees every fix, and each transition is
    # reported once. The watcher filters by a label unique to this test.
    tag = new_driver_id("fence")
    zone = await geo.CreateGeofence(
        pb.CreateGeofenceRequest(
            geofence=pb.Geofence(
                display_name="Station", geojson=_square(-1.29, 36.82, 0.01), labels={"t": tag}
            )
        )
    )
    watch = geo.WatchGeofenceEvents(pb.WatchGeofenceEventsRequest(labels={"t": tag}))
    await asyncio.sleep(1.0)  # the zone is in both replicas' indexes and the watch subscribed
    driver_id = new_driver_id("crossing")
    driver = DriverStream(location, as_driver(driver_id))
    path = [(-1.31, 36.82), (-1.295, 36.82), (-1.29, 36.82), (-1.285, 36.82), (-1.27, 36.82)]
    for seq, (lat, lng) in enumerate(path, start=1):
        driver.send(fix(driver_id, seq, lat, lng))
        await asyncio.sleep(0.3)
    enter, leave = await collect(watch, 2)
    assert (enter.event.transition, leave.event.transition) == (
        pb.GEOFENCE_TRANSITION_ENTER,
        pb.GEOFENCE_TRANSITION_EXIT,
    )
    for message in (enter, leave):
        assert message.event.driver_id == driver_id
        assert message.event.geofence_id == zone.geofence.geofence_id
        assert message.event.geofence_display_name == "Station"
    assert enter.event.position.latitude == pytest.approx(-1.295)
    assert leave.event.position.latitude == pytest.approx(-1.27)
    with pytest.raises(TimeoutError):  # and nothing more: no duplicate from the other replica
        await collect(watch, 1, timeout=1.5)
    watch.cancel()
    driver.close()
    await driver.reader


async def test_track_eta_and_heatmap(
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    as_driver: Callable[[str], Metadata],
) -> None:
    driver_id = new_driver_id("track")
    driver = DriverStream(location, as_driver(driver_id))
    path = [(40.7128 + i * 0.001, -74.0060) for i in range(6)]  # New York, north along a street
    for seq, (lat, lng) in enumerate(path, start=1):
        driver.send(fix(driver_id, seq, lat, lng, speed_mps=10.0))
        await asyncio.sleep(0.05)
    await driver.wait_for(lambda: driver.durable_seq == len(path))
    driver.close()
    await driver.reader

    request = pb.GetDriverTrackRequest(driver_id=driver_id)
    request.start_time.FromDatetime(datetime.fromtimestamp(time.time() - 600, tz=UTC))
    request.end_time.FromDatetime(datetime.fromtimestamp(time.time() + 600, tz=UTC))
    track = await geo.GetDriverTrack(request)
    assert [p.seq for p in track.points] == [1, 2, 3, 4, 5, 6]
    expected = sum(haversine_m(*a, *b) for a, b in itertools.pairwise(path))
    assert track.distance_m == pytest.approx(expected, rel=1e-6)
    assert json.loads(track.geojson)["type"] == "LineString"

    eta = await geo.EstimateEta(
        pb.EstimateEtaRequest(
            driver_id=driver_id, destination=LatLng(latitude=40.73, longitude=-74.0)
        )
    )
    assert eta.speed_mps == pytest.approx(10.0)
    assert eta.eta.ToTimedelta().total_seconds() == pytest.approx(eta.distance_m / 10.0, rel=1e-3)

    bounds = BoundingBox(
        south_west=LatLng(latitude=40.70, longitude=-74.02),
        north_east=LatLng(latitude=40.73, longitude=-73.99),
    )
    heatmap = await geo.GetSupplyHeatmap(pb.GetSupplyHeatmapRequest(bounds=bounds, resolution=9))
    assert sum(c.available_drivers for c in heatmap.cells) >= 1


async def test_a_car_parked_on_a_zones_line_enters_once_then_dwells(
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    as_driver: Callable[[str], Metadata],
) -> None:
    tag = new_driver_id("dwell")
    created = await geo.CreateGeofence(
        pb.CreateGeofenceRequest(
            geofence=pb.Geofence(
                display_name="Rank",
                geojson=_square(-33.9, 18.42, 0.01),
                labels={"t": tag},
                hysteresis_m=25.0,
                dwell_time=Duration(seconds=2),
            )
        )
    )
    assert created.geofence.hysteresis_m == 25.0
    assert created.geofence.dwell_time.seconds == 2
    got = await geo.GetGeofence(pb.GetGeofenceRequest(geofence_id=created.geofence.geofence_id))
    assert got.geofence.dwell_time.seconds == 2
    watch = geo.WatchGeofenceEvents(pb.WatchGeofenceEventsRequest(labels={"t": tag}))
    # A probe drives in and out until its ENTER comes: the zone is indexed and the watch live.
    probe_id = new_driver_id("probe")
    probe = DriverStream(location, as_driver(probe_id))
    first = asyncio.create_task(collect(watch, 1))
    seq = 0
    async with asyncio.timeout(15):
        while not first.done():
            seq += 1
            probe.send(fix(probe_id, seq, -33.9 if seq % 2 else -33.95, 18.42))
            await asyncio.wait([first], timeout=0.2)
    assert first.result()[0].event.driver_id == probe_id

    # The car stands on the zone's southern line (latitude -33.91), its fixes 4 m noisy.
    driver_id = new_driver_id("parked")
    car = DriverStream(location, as_driver(driver_id))
    rng = random.Random(11)
    seen: list[pb.GeofenceEvent] = []
    next_event = asyncio.create_task(collect(watch, 1))
    async with asyncio.timeout(20):
        for n in itertools.count(1):
            north_m = rng.gauss(0.0, 4.0)
            car.send(fix(driver_id, n, -33.91 + north_m / 111_195, 18.42, speed_mps=0.0))
            await asyncio.wait([next_event], timeout=0.25)
            if next_event.done():
                event = next_event.result()[0].event
                if event.driver_id == driver_id:
                    seen.append(event)
                if len(seen) == 2:
                    break
                next_event = asyncio.create_task(collect(watch, 1))
    assert [e.transition for e in seen] == [
        pb.GEOFENCE_TRANSITION_ENTER,
        pb.GEOFENCE_TRANSITION_DWELL,
    ]
    dwelt = seen[1].event_time.ToMilliseconds() - seen[0].event_time.ToMilliseconds()
    assert 2_000 <= dwelt < 3_000
    # Still on the line: no EXIT, no second ENTER, however the noise falls.
    for extra in range(n + 1, n + 6):
        car.send(fix(driver_id, extra, -33.91 + rng.gauss(0.0, 4.0) / 111_195, 18.42))
    assert await _events_of(watch, driver_id, quiet_s=1.5) == []
    watch.cancel()
    for stream in (probe, car):
        stream.close()
        await stream.reader


async def _events_of(watch: Any, driver_id: str, quiet_s: float) -> list[pb.GeofenceEvent]:
    """The driver's events the watch delivers until it has been quiet for `quiet_s`."""
    events: list[pb.GeofenceEvent] = []
    while True:
        try:
            (message,) = await collect(watch, 1, timeout=quiet_s)
        except TimeoutError:
            return events
        if message.event.driver_id == driver_id:
            events.append(message.event)


async def _inside_until_entered(
    location: location_grpc.LocationServiceAsyncStub,
    as_driver: Callable[[str], Metadata],
    watch: Messages,
    centre: tuple[float, float],
    count: int,
) -> list[tuple[str, DriverStream]]:
    """`count` drivers parked inside a zone, each entered. First a probe drives in and out until
    the watch reports it: the zone is indexed and the watch live, so no ENTER can be missed."""
    probe_id = new_driver_id("probe")
    probe = DriverStream(location, as_driver(probe_id))
    away = (centre[0] + 0.05, centre[1])
    async with asyncio.timeout(15):
        for seq in itertools.count(1):
            probe.send(fix(probe_id, seq, *(centre if seq % 2 else away)))
            try:
                if (await watch.next(timeout=0.3)).event.driver_id == probe_id:
                    break
            except TimeoutError:
                continue
    probe.send(fix(probe_id, seq + 1, *away))  # the probe leaves for good
    probe.close()
    await probe.reader
    drivers = []
    for i in range(count):
        driver_id = new_driver_id(f"inside{i}")
        drivers.append((driver_id, DriverStream(location, as_driver(driver_id))))
        drivers[-1][1].send(fix(driver_id, 1, *centre, speed_mps=0.0))
    ours = {driver_id for driver_id, _ in drivers}
    entered: set[str] = set()
    async with asyncio.timeout(15):
        while entered != ours:
            event = (await watch.next()).event
            if event.driver_id in ours:
                assert event.transition == pb.GEOFENCE_TRANSITION_ENTER
                entered.add(event.driver_id)
    return drivers


async def _events_for(watch: Messages, drivers: set[str]) -> list[pb.GeofenceEvent]:
    """The next event of each of `drivers` (others' events, such as a probe's, are skipped)."""
    events: dict[str, pb.GeofenceEvent] = {}
    async with asyncio.timeout(15):
        while events.keys() != drivers:
            event = (await watch.next()).event
            if event.driver_id in drivers:
                assert event.driver_id not in events, "two events for one driver"
                events[event.driver_id] = event
    return list(events.values())


async def test_deleting_a_zone_sends_exit_to_every_driver_inside_it(
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    as_driver: Callable[[str], Metadata],
) -> None:
    tag = new_driver_id("deleted")
    centre = (-12.05, -77.04)  # Lima
    zone = await geo.CreateGeofence(
        pb.CreateGeofenceRequest(
            geofence=pb.Geofence(
                display_name="Closing", geojson=_square(*centre, 0.01), labels={"t": tag}
            )
        )
    )
    zone_id = zone.geofence.geofence_id
    watch = Messages(geo.WatchGeofenceEvents(pb.WatchGeofenceEventsRequest(labels={"t": tag})))
    drivers = await _inside_until_entered(location, as_driver, watch, centre, 2)

    await geo.DeleteGeofence(pb.DeleteGeofenceRequest(geofence_id=zone_id))
    exits = await _events_for(watch, {driver_id for driver_id, _ in drivers})
    assert {e.driver_id for e in exits} == {driver_id for driver_id, _ in drivers}
    assert all(e.transition == pb.GEOFENCE_TRANSITION_EXIT for e in exits)
    assert all(e.reason == "zone_deleted" and e.geofence_display_name == "Closing" for e in exits)
    assert all(e.position.latitude == pytest.approx(centre[0]) for e in exits)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await geo.GetGeofence(pb.GetGeofenceRequest(geofence_id=zone_id))
    assert status_of(gone.value) == grpc.StatusCode.NOT_FOUND
    # Still parked where the zone was: nothing more (no ENTER of a zone that is gone).
    for driver_id, stream in drivers:
        stream.send(fix(driver_id, 1000, *centre, speed_mps=0.0))
    ours = {driver_id for driver_id, _ in drivers}

    async def none_of_ours() -> None:
        while True:  # until quiet for 1.5 s; the probe's own EXIT may still come
            assert (await watch.next(timeout=1.5)).event.driver_id not in ours

    with pytest.raises(TimeoutError):
        await none_of_ours()
    watch.cancel()
    for _, stream in drivers:
        stream.close()
        await stream.reader


async def test_a_zone_that_expires_sends_exit_when_its_time_comes(
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    as_driver: Callable[[str], Metadata],
) -> None:
    centre, tag = (-12.15, -77.02), new_driver_id("expiring")
    expires = datetime.now(UTC) + timedelta(seconds=4)
    zone = pb.Geofence(display_name="Market day", geojson=_square(*centre, 0.01), labels={"t": tag})
    zone.expire_time.FromDatetime(expires)
    created = await geo.CreateGeofence(pb.CreateGeofenceRequest(geofence=zone))
    stored_expiry = created.geofence.expire_time.ToDatetime(tzinfo=UTC)
    assert abs(stored_expiry - expires) < timedelta(milliseconds=1)
    watch = Messages(geo.WatchGeofenceEvents(pb.WatchGeofenceEventsRequest(labels={"t": tag})))
    ((driver_id, stream),) = await _inside_until_entered(location, as_driver, watch, centre, 1)
    (event,) = await _events_for(watch, {driver_id})
    assert event.transition == pb.GEOFENCE_TRANSITION_EXIT
    assert event.reason == "zone_expired"
    ended = event.event_time.ToDatetime(tzinfo=UTC)
    assert expires <= ended < expires + timedelta(seconds=5)
    # A zone must expire in the future.
    zone.expire_time.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await geo.CreateGeofence(pb.CreateGeofenceRequest(geofence=zone))
    assert status_of(refused.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "expire_time must be in the future" in (refused.value.details() or "")
    watch.cancel()
    stream.close()
    await stream.reader
