"""Ownership rules: every check allowed and denied, each denial naming its rule and the facts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import assume, given
from hypothesis import strategies as st

from ridemesh.v1 import common_pb2 as common_pb
from ridemesh.v1 import geo_query_service_pb2 as geo_pb
from ridemesh.v1 import ride_service_pb2 as pb
from services.auth.identity import Identity, Role
from services.auth.rules import (
    COARSE_CELL_M,
    STAFF,
    NearbyView,
    chat_participant,
    coarsen_for_rider,
    may_answer_offer,
    may_cancel,
    may_estimate_eta,
    may_list_rides,
    may_manage_geofences,
    may_manage_webhooks,
    may_move_ride,
    may_publish_fixes,
    may_read_driver,
    may_read_geofences,
    may_read_heatmap,
    may_read_ride,
    may_read_track,
    may_replay_fleet,
    may_request_ride,
    may_watch_area,
    may_watch_geofence_events,
    may_watch_ride_events,
    nearby_view,
    snap_to_cell,
)
from services.domain.errors import PermissionDenied
from services.domain.geodesy import haversine_m
from services.domain.parties import Participant
from services.ride.chat import authorize

RIDER = Identity("r-1", Role.RIDER)
DRIVER = Identity("d-1", Role.DRIVER)
OPS = Identity("ops-1", Role.OPS)
SERVICE = Identity("ride-service", Role.SERVICE)
EVERYONE = (RIDER, DRIVER, OPS, SERVICE)
STAFF_IDS = (OPS, SERVICE)

# The rider r-1's ride, driven by d-1.
RIDE = pb.Ride(ride_id="ride-9", rider_id="r-1", driver_id="d-1", state=pb.RIDE_STATE_IN_PROGRESS)
# r-1's ride while it is offered to d-1 and no driver holds it yet.
OFFERED = pb.Ride(
    ride_id="ride-8", rider_id="r-1", offered_driver_id="d-1", state=pb.RIDE_STATE_REQUESTED
)

ids = st.text(st.characters(codec="utf-8", categories=("L", "N", "P")), min_size=1, max_size=40)
roles = st.sampled_from(Role)
identities = st.builds(Identity, sub=ids, role=roles)


def denied(check: Callable[[], object], *fragments: str) -> None:
    """The check raises PermissionDenied with every fragment in its message."""
    with pytest.raises(PermissionDenied) as caught:
        check()
    for fragment in fragments:
        assert fragment in str(caught.value)


# --- self-acting checks: publish fixes, request rides, answer offers, move rides --------------


SELF_CHECKS = [
    (lambda who, x: may_publish_fixes(who, x), Role.DRIVER, "driver streams fixes"),
    (lambda who, x: may_request_ride(who, x), Role.RIDER, "rider requests rides"),
    (lambda who, x: may_answer_offer(who, "ride-9", x), Role.DRIVER, "driver answers offers"),
    (lambda who, x: may_move_ride(who, x), Role.DRIVER, "driver moves rides"),
]
SelfCheck = Callable[[Identity, str], None]


@pytest.mark.parametrize(("check", "role", "rule"), SELF_CHECKS)
@given(sub=ids)
def test_a_caller_acts_as_themselves(check: SelfCheck, role: Role, rule: str, sub: str) -> None:
    check(Identity(sub, role), sub)


@pytest.mark.parametrize(("check", "role", "rule"), SELF_CHECKS)
@given(sub=ids, claimed=ids)
def test_acting_as_someone_else_is_denied(
    check: SelfCheck, role: Role, rule: str, sub: str, claimed: str
) -> None:
    assume(sub != claimed)
    denied(
        lambda: check(Identity(sub, role), claimed), rule, f"token sub is {sub!r}", repr(claimed)
    )


@pytest.mark.parametrize(("check", "role", "rule"), SELF_CHECKS)
@given(who=identities)
def test_only_the_right_role_acts_even_with_a_matching_id(
    check: SelfCheck, role: Role, rule: str, who: Identity
) -> None:
    assume(who.role is not role)
    denied(lambda: check(who, who.sub), rule, f"token role is {who.role.value}, not {role.value}")


def test_the_denial_reads_as_the_rule_then_the_facts() -> None:
    with pytest.raises(PermissionDenied) as caught:
        may_publish_fixes(DRIVER, "d-2")
    assert str(caught.value) == (
        "a driver streams fixes only as themselves: token sub is 'd-1', fix driver_id is 'd-2'"
    )


def test_a_hostile_long_id_is_cut_short_in_the_message() -> None:
    with pytest.raises(PermissionDenied) as caught:
        may_publish_fixes(DRIVER, "x" * 1_000_000)
    assert len(str(caught.value)) < 300
    assert "(1000000 characters)" in str(caught.value)


def test_answering_an_offer_names_the_ride() -> None:
    denied(lambda: may_answer_offer(DRIVER, "ride-9", "d-2"), "ride 'ride-9'")


# --- reading a driver: GetDriverLocation, WatchDriver ----------------------------------------


@given(who=st.sampled_from(STAFF_IDS), driver_id=ids)
def test_staff_read_any_driver(who: Identity, driver_id: str) -> None:
    may_read_driver(who, driver_id, None)


def test_a_driver_reads_themselves_and_the_rider_of_their_active_ride_reads_them() -> None:
    may_read_driver(DRIVER, "d-1", None)
    may_read_driver(RIDER, "d-1", "r-1")


@pytest.mark.parametrize("assigned_rider_id", [None, "r-2", ""])
def test_a_rider_reads_no_driver_outside_their_active_ride(assigned_rider_id: str | None) -> None:
    denied(
        lambda: may_read_driver(RIDER, "d-1", assigned_rider_id),
        "a rider sees a driver only while that driver is assigned to their active ride",
        "driver 'd-1'",
        "rider 'r-1'",
    )


@given(driver_id=ids)
def test_a_driver_reads_no_other_driver(driver_id: str) -> None:
    assume(driver_id != DRIVER.sub)
    # Even if some rider id of that driver's ride happens to equal the caller's id.
    denied(
        lambda: may_read_driver(DRIVER, driver_id, DRIVER.sub),
        "a driver sees only their own location",
        repr(driver_id),
    )


def test_a_rider_whose_id_equals_the_driver_id_is_not_that_driver() -> None:
    denied(lambda: may_read_driver(Identity("d-1", Role.RIDER), "d-1", None), "a rider sees")


# --- staff-only and everyone checks ------------------------------------------------------------


STAFF_ONLY = [
    (may_watch_area, "only ops and service watch areas"),
    (may_manage_geofences, "only ops and service create or delete geofences"),
    (may_watch_geofence_events, "only ops and service watch geofence events"),
    (may_watch_ride_events, "only ops and service watch every ride's events"),
    (may_read_heatmap, "only ops and service read the supply heatmap"),
    (may_manage_webhooks, "only ops and service manage webhook subscriptions"),
    (may_replay_fleet, "only ops and service replay the fleet's history"),
]


@pytest.mark.parametrize(("check", "rule"), STAFF_ONLY)
@pytest.mark.parametrize("who", EVERYONE, ids=lambda who: who.role.value)
def test_staff_only_checks(check: Callable[[Identity], None], rule: str, who: Identity) -> None:
    if who.role in STAFF:
        check(who)
    else:
        denied(lambda: check(who), rule, f"token role is {who.role.value}")


@pytest.mark.parametrize("check", [may_read_geofences, may_estimate_eta])
@given(who=identities)
def test_everyone_reads_geofences_and_estimates_etas(
    check: Callable[[Identity], None], who: Identity
) -> None:
    check(who)


# --- rides: GetRide, WatchRide, ListRides, CancelRide -------------------------------------------


@pytest.mark.parametrize(
    ("who", "ride"),
    [
        (OPS, RIDE),
        (SERVICE, OFFERED),
        (RIDER, RIDE),
        (RIDER, OFFERED),
        (DRIVER, RIDE),
        (DRIVER, OFFERED),
    ],
)
def test_a_ride_is_read_by_staff_its_rider_its_driver_and_its_offered_driver(
    who: Identity, ride: pb.Ride
) -> None:
    may_read_ride(who, ride)


@pytest.mark.parametrize(
    "who",
    [
        Identity("r-2", Role.RIDER),
        Identity("d-2", Role.DRIVER),
        # Same ids, wrong roles: a rider "d-1" is not driver d-1, nor a driver "r-1" the rider.
        Identity("d-1", Role.RIDER),
        Identity("r-1", Role.DRIVER),
    ],
)
@pytest.mark.parametrize("ride", [RIDE, OFFERED])
def test_a_ride_is_not_read_by_anyone_else(who: Identity, ride: pb.Ride) -> None:
    denied(
        lambda: may_read_ride(who, ride),
        "a ride is seen only by its rider, its driver and the driver it is offered to",
        f"{who.role.value} {who.sub!r}",
        repr(ride.ride_id),
    )


@pytest.mark.parametrize(
    ("who", "rider_id", "driver_id"),
    [(OPS, "r-7", ""), (SERVICE, "", "d-7"), (RIDER, "r-1", ""), (DRIVER, "", "d-1")],
)
def test_rides_are_listed_by_staff_and_by_their_own_rider_or_driver(
    who: Identity, rider_id: str, driver_id: str
) -> None:
    may_list_rides(who, rider_id, driver_id)


@pytest.mark.parametrize(
    ("who", "rider_id", "driver_id"),
    [
        (RIDER, "r-2", ""),
        (RIDER, "", "d-1"),
        (RIDER, "r-1", "d-1"),
        (DRIVER, "", "d-2"),
        (DRIVER, "d-1", ""),
        (DRIVER, "r-1", "d-1"),
    ],
)
def test_riders_and_drivers_list_only_their_own_rides(
    who: Identity, rider_id: str, driver_id: str
) -> None:
    denied(
        lambda: may_list_rides(who, rider_id, driver_id),
        f"a {who.role.value} lists only their own rides",
        f"rider_id is {rider_id!r} and driver_id is {driver_id!r}",
    )


@pytest.mark.parametrize(
    ("who", "party", "actor_id"),
    [
        (RIDER, pb.PARTY_RIDER, "r-1"),
        (DRIVER, pb.PARTY_DRIVER, "d-1"),
        (OPS, pb.PARTY_SYSTEM, ""),
        (SERVICE, pb.PARTY_SYSTEM, "ride-service"),
    ],
)
def test_a_ride_is_cancelled_by_its_rider_its_driver_or_the_system(
    who: Identity, party: pb.Party.ValueType, actor_id: str
) -> None:
    may_cancel(who, RIDE, party, actor_id)


@pytest.mark.parametrize(
    ("who", "party", "actor_id", "fragments"),
    [
        (RIDER, pb.PARTY_SYSTEM, "r-1", ("a rider cancels only as PARTY_RIDER", "PARTY_SYSTEM")),
        (RIDER, pb.PARTY_DRIVER, "r-1", ("a rider cancels only as PARTY_RIDER",)),
        (DRIVER, pb.PARTY_RIDER, "d-1", ("a driver cancels only as PARTY_DRIVER",)),
        (OPS, pb.PARTY_RIDER, "r-1", ("an ops cancels only as PARTY_SYSTEM", "PARTY_RIDER")),
        (SERVICE, pb.PARTY_UNSPECIFIED, "", ("PARTY_UNSPECIFIED",)),
        (RIDER, 99, "r-1", ("unknown party 99",)),
        (RIDER, pb.PARTY_RIDER, "", ("a rider cancels only as themselves", "actor_id is ''")),
        (DRIVER, pb.PARTY_DRIVER, "d-2", ("a driver cancels only as themselves", "'d-2'")),
        (OPS, pb.PARTY_SYSTEM, "r-1", ("an ops cancels only as themselves", "'r-1'")),
        (
            Identity("r-2", Role.RIDER),
            pb.PARTY_RIDER,
            "r-2",
            ("a rider cancels only their own ride", "rider 'r-2' is not the rider of ride"),
        ),
        (
            Identity("d-2", Role.DRIVER),
            pb.PARTY_DRIVER,
            "d-2",
            ("a driver cancels only their own ride", "'ride-9'"),
        ),
    ],
)
def test_no_one_else_cancels(
    who: Identity, party: pb.Party.ValueType, actor_id: str, fragments: tuple[str, ...]
) -> None:
    denied(lambda: may_cancel(who, RIDE, party, actor_id), *fragments)


def test_the_offered_driver_does_not_cancel_a_ride_they_do_not_hold() -> None:
    denied(lambda: may_cancel(DRIVER, OFFERED, pb.PARTY_DRIVER, "d-1"), "only their own ride")


# --- chat ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "party"), [(RIDER, pb.PARTY_RIDER), (DRIVER, pb.PARTY_DRIVER)])
@pytest.mark.parametrize("states_itself", [False, True])
def test_the_chat_participant_comes_from_the_token(
    who: Identity, party: pb.Party.ValueType, states_itself: bool
) -> None:
    join = pb.ChatJoin(ride_id="ride-9")
    if states_itself:
        join.party, join.participant_id = party, who.sub
    participant = chat_participant(who, join)
    assert participant == Participant(party, who.sub)
    authorize(RIDE, participant)  # and it is one the chat lets into the caller's own ride


@given(claimed=ids)
def test_a_join_claiming_someone_else_is_denied(claimed: str) -> None:
    assume(claimed != RIDER.sub)
    join = pb.ChatJoin(ride_id="ride-9", participant_id=claimed)
    denied(
        lambda: chat_participant(RIDER, join),
        "a rider chats only as themselves",
        f"join participant_id is {claimed!r}",
    )


@pytest.mark.parametrize(
    ("who", "party", "rule"),
    [
        (RIDER, pb.PARTY_DRIVER, "a rider chats only as PARTY_RIDER"),
        (DRIVER, pb.PARTY_RIDER, "a driver chats only as PARTY_DRIVER"),
        (DRIVER, pb.PARTY_SYSTEM, "join party is PARTY_SYSTEM"),
        (DRIVER, 42, "join party is unknown party 42"),
    ],
)
def test_a_join_claiming_another_party_is_denied(
    who: Identity, party: pb.Party.ValueType, rule: str
) -> None:
    join = pb.ChatJoin(ride_id="ride-9", party=party, participant_id=who.sub)
    denied(lambda: chat_participant(who, join), rule)


@pytest.mark.parametrize("who", STAFF_IDS, ids=lambda who: who.role.value)
def test_staff_do_not_chat(who: Identity) -> None:
    denied(
        lambda: chat_participant(who, pb.ChatJoin(ride_id="ride-9")),
        "only a ride's rider and driver chat",
        f"token role is {who.role.value}",
    )


# --- tracks ------------------------------------------------------------------------------------


def test_a_track_is_read_by_staff_and_by_its_driver() -> None:
    for who in (OPS, SERVICE, DRIVER):
        may_read_track(who, "d-1")


@pytest.mark.parametrize("who", [Identity("d-2", Role.DRIVER), RIDER, Identity("d-1", Role.RIDER)])
def test_no_one_else_reads_a_track(who: Identity) -> None:
    denied(
        lambda: may_read_track(who, "d-1"),
        "a driver's track is read only by the driver, ops and service",
        f"{who.role.value} {who.sub!r} asked for driver 'd-1'",
    )


# --- nearby search -----------------------------------------------------------------------------


def test_staff_see_nearby_drivers_in_full_riders_coarsened_and_drivers_not_at_all() -> None:
    assert nearby_view(OPS) is NearbyView.FULL
    assert nearby_view(SERVICE) is NearbyView.FULL
    assert nearby_view(RIDER) is NearbyView.COARSE
    denied(lambda: nearby_view(DRIVER), "drivers do not search for other drivers")


def _found(lat: float, lng: float, distance_m: float, age: Duration) -> geo_pb.NearbyDriver:
    return geo_pb.NearbyDriver(
        location=common_pb.DriverLocation(
            driver_id="d-1",
            position=common_pb.LatLng(latitude=lat, longitude=lng),
            heading_deg=87.5,
            speed_mps=12.25,
            accuracy_m=4.0,
            recorded_at=Timestamp(seconds=1_700_000_000, nanos=123),
            seq=42,
            received_at=Timestamp(seconds=1_700_000_001),
            availability=common_pb.DRIVER_AVAILABILITY_AVAILABLE,
        ),
        distance_m=distance_m,
        age=age,
    )


def test_a_rider_sees_anonymous_cars_with_rounded_numbers() -> None:
    response = geo_pb.SearchNearbyDriversResponse(
        drivers=[_found(52.520008, 13.404954, 137.4, Duration(seconds=3, nanos=600_000_000))]
    )
    coarse = coarsen_for_rider(response).drivers[0]
    assert coarse.distance_m == 150.0
    assert coarse.age == Duration(seconds=4)
    lat, lng = snap_to_cell(52.520008, 13.404954)
    assert coarse.location == common_pb.DriverLocation(
        position=common_pb.LatLng(latitude=lat, longitude=lng),
        heading_deg=87.5,
        availability=common_pb.DRIVER_AVAILABILITY_AVAILABLE,
    )
    assert (lat, lng) != (52.520008, 13.404954)
    # The caller's response is left as it was.
    assert response.drivers[0].location.driver_id == "d-1"


def test_coarsening_keeps_order_and_leaves_unset_fields_unset() -> None:
    response = geo_pb.SearchNearbyDriversResponse(
        drivers=[geo_pb.NearbyDriver(distance_m=10.0), _found(0.0, 0.0, 30.0, Duration())]
    )
    first, second = coarsen_for_rider(response).drivers
    assert not first.location.HasField("position")
    assert not first.HasField("age")
    assert first.distance_m == 0.0
    assert second.distance_m == 50.0


def test_points_close_together_fall_in_one_cell() -> None:
    centre = snap_to_cell(48.8566, 2.3522)
    # About 10 m north and 10 m east of the cell's centre.
    assert snap_to_cell(centre[0] + 0.00009, centre[1] + 0.000135) == centre


@given(
    lat=st.floats(min_value=-85.0, max_value=85.0),
    lng=st.floats(min_value=-180.0, max_value=180.0, exclude_max=True),
)
def test_a_snapped_position_is_within_half_a_cell_diagonal(lat: float, lng: float) -> None:
    snapped = snap_to_cell(lat, lng)
    # Cells are a whole number per row, so a little wider than COARSE_CELL_M at most.
    assert haversine_m(lat, lng, *snapped) <= COARSE_CELL_M * 0.75
    assert -180.0 <= snapped[1] < 180.0
    # A cell's centre is its own cell's centre.
    again = snap_to_cell(*snapped)
    assert haversine_m(*snapped, *again) < 1e-3


@given(
    lat=st.floats(min_value=-90.0, max_value=90.0),
    lng=st.floats(min_value=-180.0, max_value=180.0),
)
def test_snapping_stays_on_the_globe_even_at_the_poles(lat: float, lng: float) -> None:
    snapped_lat, snapped_lng = snap_to_cell(lat, lng)
    assert -90.0 <= snapped_lat <= 90.0
    assert -180.0 <= snapped_lng < 180.0


def test_the_grid_has_no_seam_at_the_antimeridian() -> None:
    # Cells either side of 180° are neighbours of the usual width, not a sliver of a cell.
    east, west = snap_to_cell(1.0, 179.99999), snap_to_cell(1.0, -179.99999)
    assert COARSE_CELL_M <= haversine_m(*east, *west) <= COARSE_CELL_M * 1.01
