"""Ownership rules through Envoy, each both ways: the caller named by its token may do what is
theirs and is refused PERMISSION_DENIED, naming the rule, for what is not."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc import aio

from ridemesh.v1 import geo_query_service_pb2 as geo_pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2 as loc_pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1 import ride_service_pb2_grpc as ride_grpc
from ridemesh.v1.common_pb2 import BoundingBox, LatLng
from services.auth.rules import snap_to_cell
from tests.e2e.clients import DriverStream, collect, fix, new_driver_id
from tests.e2e.conftest import status_of
from tests.tokens import Metadata

pytestmark = pytest.mark.e2e

Act = Callable[[str], Metadata]
DENIED = grpc.StatusCode.PERMISSION_DENIED


def _request(rider_id: str, pickup: tuple[float, float]) -> pb.RequestRideRequest:
    return pb.RequestRideRequest(
        rider_id=rider_id,
        pickup=LatLng(latitude=pickup[0], longitude=pickup[1]),
        dropoff=LatLng(latitude=pickup[0] + 0.01, longitude=pickup[1]),
        request_id=str(uuid.uuid4()),
    )


async def _online(
    location: location_grpc.LocationServiceAsyncStub,
    as_driver: Act,
    driver_id: str,
    at: tuple[float, float],
) -> DriverStream:
    stream = DriverStream(location, as_driver(driver_id))
    stream.send(fix(driver_id, 1, *at))
    await stream.wait_for(lambda: stream.accepted_seq == 1)
    return stream


async def _close(*streams: DriverStream) -> None:
    for stream in streams:
        stream.close()
        await stream.reader


async def _denied(call: Any, words: str = "") -> str:
    """Awaits a unary call (or the first message of a stream) and checks it is refused."""
    pending = collect(call, 1) if hasattr(call, "read") else call
    with pytest.raises(aio.AioRpcError) as refused:
        await pending
    assert status_of(refused.value) == DENIED, refused.value.details()
    details = refused.value.details() or ""
    assert words in details
    return details


async def _still_open(call: Any, wait_s: float = 1.5) -> None:
    """A server stream that sends nothing yet was not refused: it is still open after wait_s."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call.read(), wait_s)
    call.cancel()


# --- LocationService --------------------------------------------------------------------------


async def test_a_driver_streams_fixes_only_as_themselves(
    location: location_grpc.LocationServiceAsyncStub, as_driver: Act, as_rider: Act
) -> None:
    me, other = new_driver_id("self"), new_driver_id("other")
    stream = DriverStream(location, as_driver(me))
    stream.send(fix(other, 1, 9.9312, 76.2673))  # Kochi
    rejected = await stream.rejection(1)
    assert rejected.code == DENIED.value[0]
    assert "a driver streams fixes only as themselves" in rejected.message
    # The rejection is in-band: the stream goes on, and the driver's own fixes are taken.
    stream.send(fix(me, 2, 9.9312, 76.2673))
    await stream.wait_for(lambda: stream.accepted_seq == 2)
    await _close(stream)

    # A rider's token is not a driver's, whatever id the fix carries.
    rider = new_driver_id("rider")
    as_someone = DriverStream(location, as_rider(rider))
    as_someone.send(fix(rider, 1, 9.9312, 76.2673))
    assert (await as_someone.rejection(1)).code == DENIED.value[0]
    await _close(as_someone)


async def test_a_driver_uploads_fixes_only_as_themselves(
    location: location_grpc.LocationServiceAsyncStub, as_driver: Act
) -> None:
    me, other = new_driver_id("up"), new_driver_id("up-other")
    mine = [fix(me, seq, 9.93, 76.26) for seq in (1, 2)]
    uploaded = await location.UploadLocations(
        loc_pb.UploadLocationsRequest(updates=mine), metadata=as_driver(me)
    )
    assert uploaded.stored_count == 2

    mixed = loc_pb.UploadLocationsRequest(updates=[fix(me, 3), fix(other, 1)])
    await _denied(
        location.UploadLocations(mixed, metadata=as_driver(me)),
        "a driver streams fixes only as themselves",
    )


async def test_a_rider_sees_a_driver_only_while_assigned_to_their_ride(
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    pickup = (5.6037, -0.1870)  # Accra
    driver_id, rider_id, stranger = (new_driver_id(p) for p in ("acc", "rider", "stranger"))
    driver = await _online(location, as_driver, driver_id, (5.6040, -0.1870))
    get = loc_pb.GetDriverLocationRequest(driver_id=driver_id)
    watch = loc_pb.WatchDriverRequest(driver_id=driver_id)

    rule = "a rider sees a driver only while that driver is assigned to their active ride"
    await _denied(location.GetDriverLocation(get, metadata=as_rider(rider_id)), rule)
    await _denied(location.WatchDriver(watch, metadata=as_rider(rider_id)), rule)

    ride = (await rides.RequestRide(_request(rider_id, pickup), metadata=as_rider(rider_id))).ride
    assert ride.offered_driver_id == driver_id
    await _denied(location.GetDriverLocation(get, metadata=as_rider(rider_id)), rule)
    me = as_driver(driver_id)
    await rides.AcceptRide(
        pb.AcceptRideRequest(ride_id=ride.ride_id, driver_id=driver_id), metadata=me
    )

    seen = await location.GetDriverLocation(get, metadata=as_rider(rider_id))
    assert seen.location.driver_id == driver_id
    watching = location.WatchDriver(watch, metadata=as_rider(rider_id))
    (first,) = await collect(watching, 1)
    assert first.location.driver_id == driver_id
    await _denied(location.GetDriverLocation(get, metadata=as_rider(stranger)), rule)
    # The driver sees themselves; another driver does not.
    await location.GetDriverLocation(get, metadata=me)
    other_driver = as_driver(new_driver_id("peer"))
    await _denied(location.GetDriverLocation(get, metadata=other_driver), "own location")

    ride_id = ride.ride_id
    await rides.MarkDriverArrived(
        pb.MarkDriverArrivedRequest(ride_id=ride_id, driver_id=driver_id), metadata=me
    )
    await rides.StartRide(pb.StartRideRequest(ride_id=ride_id, driver_id=driver_id), metadata=me)
    await rides.CompleteRide(
        pb.CompleteRideRequest(ride_id=ride_id, driver_id=driver_id), metadata=me
    )
    await _denied(location.GetDriverLocation(get, metadata=as_rider(rider_id)), rule)
    # The rider's open watch ends with the ride: the driver's next fix is not shown to them.
    driver.send(fix(driver_id, 2, 5.6041, -0.1870))
    await _denied(watching, rule)
    await _close(driver)


async def test_only_staff_watch_areas(
    location: location_grpc.LocationServiceAsyncStub, as_driver: Act, as_rider: Act
) -> None:
    driver_id = new_driver_id("area")
    driver = await _online(location, as_driver, driver_id, (-12.0464, -77.0428))  # Lima
    bounds = BoundingBox(
        south_west=LatLng(latitude=-12.06, longitude=-77.06),
        north_east=LatLng(latitude=-12.03, longitude=-77.03),
    )
    request = loc_pb.WatchAreaRequest(bounds=bounds)
    await _denied(location.WatchArea(request, metadata=as_rider("r")), "only ops and service")
    await _denied(location.WatchArea(request, metadata=as_driver(driver_id)), "watch areas")
    ops_watch = location.WatchArea(request)  # the channel's ops token
    seen = await collect(ops_watch, 1)
    assert seen[0].location.driver_id == driver_id
    ops_watch.cancel()
    await _close(driver)


# --- RideService ------------------------------------------------------------------------------


async def test_a_rider_requests_rides_only_as_themselves(
    rides: ride_grpc.RideServiceAsyncStub, as_driver: Act, as_rider: Act
) -> None:
    rider, other = new_driver_id("r"), new_driver_id("r-other")
    far_away = (-75.1, 123.3)  # Antarctica: no driver, so the ride expires at once
    rule = "a rider requests rides only as themselves"
    await _denied(rides.RequestRide(_request(other, far_away), metadata=as_rider(rider)), rule)
    await _denied(rides.RequestRide(_request(rider, far_away), metadata=as_driver(rider)), rule)
    ride = (await rides.RequestRide(_request(rider, far_away), metadata=as_rider(rider))).ride
    assert ride.rider_id == rider


async def test_a_rider_reads_watches_lists_and_cancels_only_their_own_rides(
    rides: ride_grpc.RideServiceAsyncStub, as_rider: Act
) -> None:
    owner, stranger = new_driver_id("owner"), new_driver_id("nosy")
    request = _request(owner, (-75.2, 123.4))
    ride = (await rides.RequestRide(request, metadata=as_rider(owner))).ride

    rule = "a ride is seen only by its rider"
    get = pb.GetRideRequest(ride_id=ride.ride_id)
    await _denied(rides.GetRide(get, metadata=as_rider(stranger)), rule)
    await _denied(
        rides.WatchRide(pb.WatchRideRequest(ride_id=ride.ride_id), metadata=as_rider(stranger)),
        rule,
    )
    assert (await rides.GetRide(get, metadata=as_rider(owner))).ride.ride_id == ride.ride_id
    watch = rides.WatchRide(pb.WatchRideRequest(ride_id=ride.ride_id), metadata=as_rider(owner))
    (first,) = await collect(watch, 1)
    assert first.ride.ride_id == ride.ride_id
    watch.cancel()
    assert (await rides.GetRide(get)).ride.ride_id == ride.ride_id  # ops sees any ride

    mine = await rides.ListRides(pb.ListRidesRequest(rider_id=owner), metadata=as_rider(owner))
    assert [r.ride_id for r in mine.rides] == [ride.ride_id]
    await _denied(
        rides.ListRides(pb.ListRidesRequest(rider_id=owner), metadata=as_rider(stranger)),
        "lists only their own rides",
    )
    await _denied(
        rides.ListRides(pb.ListRidesRequest(), metadata=as_rider(owner)),
        "only ops and service list every ride",
    )
    every = await rides.ListRides(pb.ListRidesRequest(page_size=500))  # ops lists every ride
    assert ride.ride_id in {r.ride_id for r in every.rides}

    cancel = pb.CancelRideRequest(
        ride_id=ride.ride_id, cancelled_by=pb.PARTY_RIDER, actor_id=stranger
    )
    await _denied(rides.CancelRide(cancel, metadata=as_rider(stranger)), "only their own ride")


async def test_a_driver_answers_and_moves_only_rides_as_themselves(
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    pickup = (21.0285, 105.8542)  # Hanoi
    near, far, rider = new_driver_id("near"), new_driver_id("far"), new_driver_id("r")
    streams = [
        await _online(location, as_driver, near, (21.0287, 105.8542)),
        await _online(location, as_driver, far, (21.0400, 105.8542)),
    ]
    ride = (await rides.RequestRide(_request(rider, pickup), metadata=as_rider(rider))).ride
    assert ride.offered_driver_id == near

    rule = "a driver answers offers only as themselves"
    accept = pb.AcceptRideRequest(ride_id=ride.ride_id, driver_id=near)
    await _denied(rides.AcceptRide(accept, metadata=as_driver(far)), rule)
    await _denied(rides.AcceptRide(accept, metadata=as_rider(rider)), rule)
    decline = pb.DeclineRideRequest(ride_id=ride.ride_id, driver_id=near)
    await _denied(rides.DeclineRide(decline, metadata=as_driver(far)), rule)
    accepted = await rides.AcceptRide(accept, metadata=as_driver(near))
    assert accepted.ride.driver_id == near

    arrived = pb.MarkDriverArrivedRequest(ride_id=ride.ride_id, driver_id=near)
    await _denied(
        rides.MarkDriverArrived(arrived, metadata=as_driver(far)),
        "a driver moves rides only as themselves",
    )
    await rides.MarkDriverArrived(arrived, metadata=as_driver(near))
    # The assigned driver sees the ride; a driver who is not on it does not.
    get = pb.GetRideRequest(ride_id=ride.ride_id)
    await rides.GetRide(get, metadata=as_driver(near))
    await _denied(rides.GetRide(get, metadata=as_driver(far)), "a ride is seen only")
    cancel = pb.CancelRideRequest(ride_id=ride.ride_id, cancelled_by=pb.PARTY_RIDER, actor_id=rider)
    cancelled = await rides.CancelRide(cancel, metadata=as_rider(rider))
    assert cancelled.ride.state == pb.RIDE_STATE_CANCELLED
    await _close(*streams)


async def test_only_the_rides_rider_and_driver_chat(
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    driver_id, rider_id = new_driver_id("chat-d"), new_driver_id("chat-r")
    driver = await _online(location, as_driver, driver_id, (59.9140, 10.7522))  # Oslo
    request = _request(rider_id, (59.9139, 10.7522))
    ride = (await rides.RequestRide(request, metadata=as_rider(rider_id))).ride
    await rides.AcceptRide(
        pb.AcceptRideRequest(ride_id=ride.ride_id, driver_id=driver_id),
        metadata=as_driver(driver_id),
    )

    def join_and_send(text: str = "") -> list[pb.ChatRequest]:
        messages = [pb.ChatRequest(join=pb.ChatJoin(ride_id=ride.ride_id))]
        if text:
            send = pb.ChatSend(text=text, client_message_id=text)
            messages.append(pb.ChatRequest(send=send))
        return messages

    # A valid token of someone who is not on the ride, as a rider or as a driver.
    for stranger in (as_rider(new_driver_id("s")), as_driver(new_driver_id("s"))):
        await _denied(rides.Chat(iter(join_and_send()), metadata=stranger), "is not the rider")
    # Claiming to be the ride's rider in the join does not help.
    claim = pb.ChatJoin(ride_id=ride.ride_id, party=pb.PARTY_RIDER, participant_id=rider_id)
    posing = rides.Chat(iter([pb.ChatRequest(join=claim)]), metadata=as_rider("impostor"))
    await _denied(posing, "chats only as themselves")
    await _denied(rides.Chat(iter(join_and_send())), "only a ride's rider and driver chat")

    call = rides.Chat(iter(join_and_send("hello")), metadata=as_rider(rider_id))
    (message,) = await collect(call, 1)
    assert (message.message.text, message.message.sender_id) == ("hello", rider_id)
    assert message.message.sender == pb.PARTY_RIDER
    call.cancel()
    await _close(driver)


# --- GeoQueryService --------------------------------------------------------------------------


async def test_a_rider_searching_nearby_sees_anonymous_coarse_cars_and_a_driver_is_refused(
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    point = (-34.90113, -56.16453)  # Montevideo
    driver_id = new_driver_id("near")
    driver = await _online(location, as_driver, driver_id, point)
    request = geo_pb.SearchNearbyDriversRequest(
        center=LatLng(latitude=point[0], longitude=point[1]), radius_m=500
    )

    full = await geo.SearchNearbyDrivers(request)  # ops
    assert [d.location.driver_id for d in full.drivers] == [driver_id]
    assert full.drivers[0].location.position.latitude == pytest.approx(point[0])

    coarse = await geo.SearchNearbyDrivers(request, metadata=as_rider(new_driver_id("r")))
    assert len(coarse.drivers) == 1
    car = coarse.drivers[0]
    assert car.location.driver_id == ""
    assert car.location.seq == 0
    assert car.location.speed_mps == 0
    snapped = (car.location.position.latitude, car.location.position.longitude)
    assert snapped == pytest.approx(snap_to_cell(*point))
    assert snapped != pytest.approx(point, abs=1e-6)
    assert car.distance_m % 50 == 0

    await _denied(
        geo.SearchNearbyDrivers(request, metadata=as_driver(driver_id)),
        "drivers do not search for other drivers",
    )
    await _close(driver)


def _square(lat: float, lng: float, half: float) -> str:
    ring = [
        [lng - half, lat - half],
        [lng + half, lat - half],
        [lng + half, lat + half],
        [lng - half, lat + half],
        [lng - half, lat - half],
    ]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


async def test_only_staff_manage_geofences_and_everyone_reads_them(
    geo: geo_grpc.GeoQueryServiceAsyncStub, as_driver: Act, as_rider: Act
) -> None:
    tag = new_driver_id("rules-zone")
    fence = geo_pb.Geofence(
        display_name="Zone", geojson=_square(-1.0, -80.0, 0.01), labels={"t": tag}
    )
    create = geo_pb.CreateGeofenceRequest(geofence=fence)
    rule = "only ops and service create or delete geofences"
    await _denied(geo.CreateGeofence(create, metadata=as_rider("r")), rule)
    await _denied(geo.CreateGeofence(create, metadata=as_driver("d")), rule)
    created = (await geo.CreateGeofence(create)).geofence  # ops

    get = geo_pb.GetGeofenceRequest(geofence_id=created.geofence_id)
    got = await geo.GetGeofence(get, metadata=as_rider("r"))
    assert got.geofence.geofence_id == created.geofence_id
    point = geo_pb.CheckPointRequest(point=LatLng(latitude=-1.0, longitude=-80.0))
    inside = await geo.CheckPoint(point, metadata=as_driver("d"))
    assert created.geofence_id in [g.geofence_id for g in inside.geofences]

    delete = geo_pb.DeleteGeofenceRequest(geofence_id=created.geofence_id)
    await _denied(geo.DeleteGeofence(delete, metadata=as_rider("r")), rule)
    await geo.DeleteGeofence(delete)


async def test_only_staff_watch_geofence_events_and_read_the_heatmap(
    geo: geo_grpc.GeoQueryServiceAsyncStub, as_driver: Act, as_rider: Act
) -> None:
    events = geo_pb.WatchGeofenceEventsRequest(labels={"t": new_driver_id("none")})
    rule = "only ops and service watch geofence events"
    await _denied(geo.WatchGeofenceEvents(events, metadata=as_rider("r")), rule)
    await _denied(geo.WatchGeofenceEvents(events, metadata=as_driver("d")), rule)
    await _still_open(geo.WatchGeofenceEvents(events))  # ops

    bounds = BoundingBox(
        south_west=LatLng(latitude=-1.1, longitude=-80.1),
        north_east=LatLng(latitude=-0.9, longitude=-79.9),
    )
    heatmap = geo_pb.GetSupplyHeatmapRequest(bounds=bounds, resolution=7)
    rule = "only ops and service read the supply heatmap"
    await _denied(geo.GetSupplyHeatmap(heatmap, metadata=as_rider("r")), rule)
    await _denied(geo.GetSupplyHeatmap(heatmap, metadata=as_driver("d")), rule)
    await geo.GetSupplyHeatmap(heatmap)  # ops


async def test_a_drivers_track_is_read_by_the_driver_and_staff_only(
    geo: geo_grpc.GeoQueryServiceAsyncStub, as_driver: Act, as_rider: Act
) -> None:
    driver_id = new_driver_id("track")
    request = geo_pb.GetDriverTrackRequest(driver_id=driver_id)
    request.start_time.GetCurrentTime()
    request.end_time.GetCurrentTime()
    request.start_time.seconds -= 600
    await geo.GetDriverTrack(request, metadata=as_driver(driver_id))
    await geo.GetDriverTrack(request)  # ops
    rule = "a driver's track is read only by the driver, ops and service"
    await _denied(geo.GetDriverTrack(request, metadata=as_driver(new_driver_id("x"))), rule)
    await _denied(geo.GetDriverTrack(request, metadata=as_rider("r")), rule)
