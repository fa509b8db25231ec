"""The pure part of ride proximity: which flags a fix implies and which events it raises."""

from __future__ import annotations

import json

import pytest

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import LatLng
from services.live.events import LoggedEvent
from services.ride.proximity import (
    KIND_NAMES,
    Target,
    parse_target,
    ride_event,
    step,
    target_fields,
)

Kind = pb.RideEventKind
APPROACHING = Kind.RIDE_EVENT_KIND_APPROACHING_PICKUP
AT = Kind.RIDE_EVENT_KIND_AT_PICKUP
LEFT = Kind.RIDE_EVENT_KIND_LEFT_PICKUP
DROPOFF = Kind.RIDE_EVENT_KIND_APPROACHING_DROPOFF

PICKUP = (41.7151, 44.8271)
DROP = (41.7300, 44.7900)
# One metre north is this many degrees of latitude.
M = 1 / 111_195.0


def north(metres: float, of: tuple[float, float] = PICKUP) -> tuple[float, float]:
    return of[0] + metres * M, of[1]


def target(stage: str = "assigned", flags: str = "") -> Target:
    return Target("r-1", stage, PICKUP, DROP, False, flags)


def kinds(result: tuple[str, list[tuple[int, float]]]) -> list[int]:
    return [kind for kind, _ in result[1]]


def test_approaching_the_pickup_within_500_m_once() -> None:
    flags, events = step(target(), *north(480), 10.0)
    assert (flags, [k for k, _ in events]) == ("a", [APPROACHING])
    assert events[0][1] == pytest.approx(480, abs=1)
    assert step(target(flags="a"), *north(300), 10.0) == ("a", [])  # no second event


def test_far_but_fast_counts_as_approaching_by_eta() -> None:
    assert kinds(step(target(), *north(1500), 15.0)) == [APPROACHING]  # 100 s away
    assert kinds(step(target(), *north(1500), 5.0)) == []  # 300 s away


def test_the_approach_flag_drops_only_beyond_700_m_so_jitter_at_500_is_one_event() -> None:
    assert step(target(flags="a"), *north(650), 0.0) == ("a", [])
    assert step(target(flags="a"), *north(750), 0.0) == ("", [])
    assert kinds(step(target(), *north(499), 0.0)) == [APPROACHING]  # a new approach


def test_at_the_pickup_needs_the_car_nearly_stopped() -> None:
    assert kinds(step(target(flags="a"), *north(30), 8.0)) == []
    flags, events = step(target(flags="a"), *north(30), 0.5)
    assert (flags, [k for k, _ in events]) == ("ap", [AT])


def test_arriving_straight_away_is_at_pickup_without_a_separate_approach() -> None:
    assert kinds(step(target(), *north(10), 0.0)) == [AT]


def test_leaving_the_pickup_beyond_150_m_without_starting() -> None:
    assert step(target(flags="ap"), *north(120), 5.0) == ("ap", [])  # not yet
    flags, events = step(target("arrived", "ap"), *north(200), 5.0)
    assert (flags, [k for k, _ in events]) == ("a", [LEFT])


def test_on_the_ride_only_the_dropoff_counts() -> None:
    flags, events = step(target("riding", "ap"), *north(400, DROP), 10.0)
    assert (flags, [k for k, _ in events]) == ("o", [DROPOFF])
    assert step(target("riding", "o"), *north(650, DROP), 10.0) == ("o", [])
    assert step(target("riding", "o"), *north(800, DROP), 10.0) == ("", [])
    assert step(target("riding"), *PICKUP, 0.0) == ("", [])  # the pickup means nothing now


def test_distances_are_metres_at_any_latitude() -> None:
    far_north = Target("r", "assigned", (78.22, 15.65), DROP)
    east = (78.22, 15.65 + 400 / (111_195.0 * 0.2036))  # cos(78.22°) ≈ 0.2036
    (_, events) = step(far_north, *east, 0.0)
    assert [k for k, _ in events] == [APPROACHING]
    assert events[0][1] == pytest.approx(400, rel=0.01)


def test_target_fields_round_trip() -> None:
    ride = pb.Ride(
        ride_id="r-9",
        driver_id="d-1",
        state=pb.RideState.RIDE_STATE_DRIVER_ARRIVED,
        pickup=LatLng(latitude=PICKUP[0], longitude=PICKUP[1]),
        dropoff=LatLng(latitude=DROP[0], longitude=DROP[1]),
        auto_arrive=True,
    )
    stored = {str(k).encode(): str(v).encode() for k, v in target_fields(ride).items()}
    stored[b"x"] = b"ap"
    assert parse_target(stored) == Target("r-9", "arrived", PICKUP, DROP, True, "ap")
    assert parse_target({}) is None


def test_a_logged_ride_event_as_the_api_shows_it() -> None:
    fix = {"d": "d-1", "t": 1_764_331_200_123, "lat": 41.7, "lng": 44.8}
    logged = LoggedEvent(0, (5, 2), "e", KIND_NAMES[AT], fix, {"id": "r-1", "m": 12.5})
    event = ride_event(logged)
    assert (event.kind, event.ride_id, event.driver_id) == (AT, "r-1", "d-1")
    assert (event.distance_m, event.event_id) == (12.5, "0:5-2")
    assert event.event_time.ToMilliseconds() == fix["t"]
    assert json.loads(json.dumps(fix))["lat"] == event.position.latitude
