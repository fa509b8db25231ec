"""Dispatch's pure parts: the search it asks for, its offers, and a stream's control queue."""

from __future__ import annotations

import logging

import pytest

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverAvailability, DriverLocation, LatLng
from ridemesh.v1.location_service_pb2 import (
    RideOfferWithdrawn,
    StreamLocationsResponse,
)
from services.domain.geodesy import haversine_m
from services.domain.validation import FixLimits
from services.location.session import DriverSession
from services.location.streams import MAX_QUEUED_CONTROL, DriverStream
from services.location.throttle import TokenBucket
from services.ride.dispatch import indexable, offer_message, search_request
from services.ride.effects import withdrawn_message
from services.server.config import Settings

BUSY = DriverAvailability.DRIVER_AVAILABILITY_BUSY
AVAILABLE = DriverAvailability.DRIVER_AVAILABILITY_AVAILABLE


def _ride(lat: float = 52.52, lng: float = 13.405) -> pb.Ride:
    return pb.Ride(
        ride_id="r1",
        state=pb.RIDE_STATE_REQUESTED,
        pickup=LatLng(latitude=lat, longitude=lng),
        dropoff=LatLng(latitude=52.5, longitude=13.3),
    )


def test_the_search_asks_for_available_drivers_around_the_pickup() -> None:
    settings = Settings(
        "redis://x", "postgresql://x", dispatch_radius_m=3000.0, dispatch_candidates=7
    )
    request = search_request(_ride(), settings)
    assert request.center == _ride().pickup
    assert (request.radius_m, request.max_results, request.available_only) == (3000.0, 7, True)


def test_an_offer_carries_the_ride_the_distance_from_the_drivers_fix_and_its_expiry() -> None:
    ride = _ride()
    driver = DriverLocation(driver_id="d1", position=LatLng(latitude=52.53, longitude=13.41))
    message = offer_message(ride, driver, 1_800_000_015.25)
    offer = message.offer
    assert message.WhichOneof("kind") == "offer"
    assert (offer.ride_id, offer.pickup, offer.dropoff) == ("r1", ride.pickup, ride.dropoff)
    assert offer.pickup_distance_m == pytest.approx(haversine_m(52.53, 13.41, 52.52, 13.405))
    assert offer.pickup_distance_m > 1000
    assert offer.expire_time.ToNanoseconds() == 1_800_000_015_250_000_000


def test_an_offer_to_a_driver_without_a_live_fix_has_no_distance() -> None:
    assert offer_message(_ride(), None, 1.0).offer.pickup_distance_m == 0.0


def test_a_withdrawal_names_the_ride_and_why() -> None:
    message = withdrawn_message("r1", "the ride was cancelled")
    assert message.offer_withdrawn == RideOfferWithdrawn(
        ride_id="r1", reason="the ride was cancelled"
    )


@pytest.mark.parametrize(
    ("lat", "expected"),
    [(0.0, True), (85.05, True), (-85.05, True), (85.06, False), (-89.0, False)],
)
def test_only_pickups_the_geo_index_can_hold_are_indexed(lat: float, expected: bool) -> None:
    assert indexable(LatLng(latitude=lat, longitude=10.0)) is expected


def _stream() -> DriverStream:
    stream = DriverStream(DriverSession(FixLimits(), TokenBucket(10.0, 10)))
    stream.session.bind("d1", 0)
    return stream


def test_control_messages_go_out_in_order_after_rejections_and_before_the_ack() -> None:
    stream = _stream()
    offer = offer_message(_ride(), None, 1.0)
    withdrawn = withdrawn_message("r1", "the offer timed out")
    stream.control(offer)
    stream.request_ack()
    stream.control(withdrawn)
    assert stream.wake.is_set()
    kinds = [m.WhichOneof("kind") for m in stream.outgoing()]
    assert kinds == ["offer", "offer_withdrawn", "ack"]
    assert stream.outgoing() == []


def test_an_availability_message_changes_what_the_streams_fixes_carry_and_reaches_the_app() -> None:
    stream = _stream()
    assert stream.availability == AVAILABLE
    stream.control(StreamLocationsResponse(availability=BUSY))
    assert stream.availability == BUSY
    assert stream.outgoing() == [StreamLocationsResponse(availability=BUSY)]
    stream.control(StreamLocationsResponse(availability=AVAILABLE))
    assert stream.availability == AVAILABLE


def test_a_stream_that_is_not_read_keeps_the_newest_control_messages_and_logs_the_drop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = _stream()
    with caplog.at_level(logging.WARNING):
        for n in range(MAX_QUEUED_CONTROL + 3):
            stream.control(withdrawn_message(f"r{n}", "x"))
    sent = stream.outgoing()
    assert len(sent) == MAX_QUEUED_CONTROL
    assert sent[0].offer_withdrawn.ride_id == "r3"
    assert sent[-1].offer_withdrawn.ride_id == f"r{MAX_QUEUED_CONTROL + 2}"
    assert sum("not reading its stream" in r.message for r in caplog.records) == 3
