"""Ownership rules: who may call what, as pure checks over the caller and facts the servicer has.

Each `may_*` check returns None when the caller may go on, and raises PermissionDenied naming the
rule and the facts that broke it otherwise. Ids are compared per role: a rider whose id happens to
equal a driver's id is still not that driver. `ops` and `service` are the staff roles: they see
everything but never act as a rider or a driver.
"""

from __future__ import annotations

import enum
import math

from ridemesh.v1 import geo_query_service_pb2 as geo_pb
from ridemesh.v1 import ride_service_pb2 as ride_pb
from services.auth.identity import Identity, Role
from services.domain.errors import PermissionDenied
from services.domain.geodesy import EARTH_RADIUS_M, normalize_lng
from services.domain.parties import Participant

STAFF: frozenset[Role] = frozenset({Role.OPS, Role.SERVICE})
# Ids are echoed in messages; a hostile megabyte-long id must not become a megabyte-long status.
_MAX_SHOWN_ID_CHARS = 64

# "Cars near you": positions snap to cells about this wide, distances and ages to these steps.
COARSE_CELL_M = 100.0
COARSE_DISTANCE_STEP_M = 50.0
_CELL_LAT_DEG = math.degrees(COARSE_CELL_M / EARTH_RADIUS_M)


class NearbyView(enum.Enum):
    """What a nearby search shows its caller."""

    FULL = "full"  # every field, driver ids included (staff)
    COARSE = "coarse"  # anonymous cars on a ~100 m grid (riders); see coarsen_for_rider


# --- LocationService --------------------------------------------------------------------------


def may_publish_fixes(who: Identity, driver_id: str) -> None:
    """StreamLocations, UploadLocations: a driver sends fixes only as themselves."""
    _require_self(who, Role.DRIVER, driver_id, "a driver streams fixes only as themselves", "fix")


def may_read_driver(who: Identity, driver_id: str, assigned_rider_id: str | None) -> None:
    """GetDriverLocation, WatchDriver: staff, the driver, or the rider of the active ride the
    driver is assigned to (`assigned_rider_id`, None when the driver has no active ride)."""
    if who.role in STAFF or (who.role is Role.DRIVER and who.sub == driver_id):
        return
    if who.role is Role.RIDER and assigned_rider_id is not None and assigned_rider_id == who.sub:
        return
    if who.role is Role.RIDER:
        raise PermissionDenied(
            "a rider sees a driver only while that driver is assigned to their active ride: "
            f"driver {_id(driver_id)} is not assigned to an active ride of rider {_id(who.sub)}"
        )
    raise PermissionDenied(
        "a driver sees only their own location: "
        f"token sub is {_id(who.sub)}, request driver_id is {_id(driver_id)}"
    )


def may_watch_area(who: Identity) -> None:
    """WatchArea: staff only (riders see cars near them through SearchNearbyDrivers)."""
    _require_staff(who, "only ops and service watch areas")


# --- RideService ------------------------------------------------------------------------------


def may_request_ride(who: Identity, rider_id: str) -> None:
    """RequestRide: a rider requests rides only as themselves."""
    _require_self(who, Role.RIDER, rider_id, "a rider requests rides only as themselves", "request")


def may_read_ride(who: Identity, ride: ride_pb.Ride) -> None:
    """GetRide, WatchRide: staff, the ride's rider, its assigned driver, or the driver it is
    offered to."""
    if who.role in STAFF or _is_party(who, ride):
        return
    if who.role is Role.DRIVER and ride.offered_driver_id and who.sub == ride.offered_driver_id:
        return
    raise PermissionDenied(
        "a ride is seen only by its rider, its driver and the driver it is offered to: "
        f"{who.role.value} {_id(who.sub)} is none of these for ride {_id(ride.ride_id)}"
    )


def may_list_rides(who: Identity, rider_id: str, driver_id: str) -> None:
    """ListRides: staff list anyone's rides, or every ride; a rider or a driver only their own."""
    if who.role in STAFF:
        return
    if not rider_id and not driver_id:
        raise PermissionDenied(
            f"only ops and service list every ride; {_a(who.role)} sets "
            f"{'rider_id' if who.role is Role.RIDER else 'driver_id'} to their own id "
            f"{_id(who.sub)}"
        )
    mine, other = (rider_id, driver_id) if who.role is Role.RIDER else (driver_id, rider_id)
    if mine == who.sub and not other:
        return
    raise PermissionDenied(
        f"{_a(who.role)} lists only their own rides: token sub is {_id(who.sub)}, "
        f"request rider_id is {_id(rider_id)} and driver_id is {_id(driver_id)}"
    )


def may_answer_offer(who: Identity, ride_id: str, driver_id: str) -> None:
    """AcceptRide, DeclineRide: a driver answers offers only as themselves (the store then checks
    the ride is offered to that driver)."""
    _require_self(
        who,
        Role.DRIVER,
        driver_id,
        f"a driver answers offers only as themselves (ride {_id(ride_id)})",
        "request",
    )


def may_move_ride(who: Identity, driver_id: str) -> None:
    """MarkDriverArrived, StartRide, CompleteRide: a driver moves rides only as themselves (the
    store then checks they are the ride's assigned driver)."""
    _require_self(who, Role.DRIVER, driver_id, "a driver moves rides only as themselves", "request")


def may_cancel(
    who: Identity, ride: ride_pb.Ride, party: ride_pb.Party.ValueType, actor_id: str
) -> None:
    """CancelRide: the ride's rider as PARTY_RIDER, its assigned driver as PARTY_DRIVER, staff as
    PARTY_SYSTEM; each as themselves (`actor_id` is the token's sub; staff may leave it empty)."""
    expected = _CANCEL_PARTY[who.role]
    if party != expected:
        raise PermissionDenied(
            f"{_a(who.role)} cancels only as {ride_pb.Party.Name(expected)}: "
            f"request cancelled_by is {_party_name(party)}"
        )
    if actor_id != who.sub and not (who.role in STAFF and not actor_id):
        raise PermissionDenied(
            f"{_a(who.role)} cancels only as themselves: "
            f"token sub is {_id(who.sub)}, request actor_id is {_id(actor_id)}"
        )
    if who.role not in STAFF and not _is_party(who, ride):
        raise PermissionDenied(
            f"{_a(who.role)} cancels only their own ride: "
            f"{who.role.value} {_id(who.sub)} is not the {who.role.value} of ride "
            f"{_id(ride.ride_id)}"
        )


_CANCEL_PARTY: dict[Role, ride_pb.Party.ValueType] = {
    Role.RIDER: ride_pb.PARTY_RIDER,
    Role.DRIVER: ride_pb.PARTY_DRIVER,
    Role.OPS: ride_pb.PARTY_SYSTEM,
    Role.SERVICE: ride_pb.PARTY_SYSTEM,
}


def chat_participant(who: Identity, join: ride_pb.ChatJoin) -> Participant:
    """Chat: the caller as a chat participant, from the token. The join may leave `party` and
    `participant_id` empty; when it states them they must be the caller's. Staff do not chat.
    Use as `identify=lambda join: chat_participant(who, join)`; chat.authorize then checks the
    participant belongs to the ride."""
    if who.role in STAFF:
        raise PermissionDenied(
            f"only a ride's rider and driver chat: token role is {who.role.value}"
        )
    party = ride_pb.PARTY_RIDER if who.role is Role.RIDER else ride_pb.PARTY_DRIVER
    if join.party not in (ride_pb.PARTY_UNSPECIFIED, party):
        raise PermissionDenied(
            f"{_a(who.role)} chats only as {ride_pb.Party.Name(party)}: "
            f"join party is {_party_name(join.party)}"
        )
    if join.participant_id and join.participant_id != who.sub:
        raise PermissionDenied(
            f"{_a(who.role)} chats only as themselves: token sub is {_id(who.sub)}, "
            f"join participant_id is {_id(join.participant_id)}"
        )
    return Participant(party, who.sub)


# --- GeoQueryService --------------------------------------------------------------------------


def may_manage_geofences(who: Identity) -> None:
    """CreateGeofence, DeleteGeofence: staff only."""
    _require_staff(who, "only ops and service create or delete geofences")


def may_read_geofences(who: Identity) -> None:
    """GetGeofence, ListGeofences, CheckPoint: every role (zones are not private)."""


def may_watch_geofence_events(who: Identity) -> None:
    """WatchGeofenceEvents: staff only (events name drivers)."""
    _require_staff(who, "only ops and service watch geofence events")


def may_watch_ride_events(who: Identity) -> None:
    """WatchRideEvents: staff only (every ride's events; a rider sees their own in WatchRide)."""
    _require_staff(who, "only ops and service watch every ride's events; riders use WatchRide")


def may_manage_webhooks(who: Identity) -> None:
    """CreateWebhook, ListWebhooks, DeleteWebhook, ListWebhookDeadLetters,
    ReplayWebhookDeadLetters: staff only (webhooks send events that name drivers)."""
    _require_staff(who, "only ops and service manage webhook subscriptions")


def may_read_heatmap(who: Identity) -> None:
    """GetSupplyHeatmap: staff only."""
    _require_staff(who, "only ops and service read the supply heatmap")


def may_read_track(who: Identity, driver_id: str) -> None:
    """GetDriverTrack: staff, or the driver themselves."""
    if who.role in STAFF or (who.role is Role.DRIVER and who.sub == driver_id):
        return
    raise PermissionDenied(
        "a driver's track is read only by the driver, ops and service: "
        f"{who.role.value} {_id(who.sub)} asked for driver {_id(driver_id)}"
    )


def may_replay_fleet(who: Identity) -> None:
    """ReplayFleet: staff only (it plays back every driver in a box)."""
    _require_staff(who, "only ops and service replay the fleet's history")


def may_estimate_eta(who: Identity) -> None:
    """EstimateEta: every role (it says nothing about anyone)."""


def nearby_view(who: Identity) -> NearbyView:
    """SearchNearbyDrivers: staff see drivers in full, riders see anonymous coarsened cars, and
    drivers may not search (it would show them their competitors by id and position)."""
    if who.role in STAFF:
        return NearbyView.FULL
    if who.role is Role.RIDER:
        return NearbyView.COARSE
    raise PermissionDenied("drivers do not search for other drivers: token role is driver")


def coarsen_for_rider(
    response: geo_pb.SearchNearbyDriversResponse,
) -> geo_pb.SearchNearbyDriversResponse:
    """The "cars near you" view of a search: no driver ids, positions snapped to a ~100 m grid,
    distances to 50 m, ages to whole seconds; only heading and availability kept besides.
    Fields are copied by allow-list, so one added to DriverLocation later stays hidden."""
    return geo_pb.SearchNearbyDriversResponse(
        drivers=[_coarse_driver(found) for found in response.drivers]
    )


def _coarse_driver(found: geo_pb.NearbyDriver) -> geo_pb.NearbyDriver:
    location = found.location
    coarse = geo_pb.NearbyDriver(
        distance_m=round(found.distance_m / COARSE_DISTANCE_STEP_M) * COARSE_DISTANCE_STEP_M
    )
    coarse.location.heading_deg = location.heading_deg
    coarse.location.availability = location.availability
    if location.HasField("position"):
        lat, lng = snap_to_cell(location.position.latitude, location.position.longitude)
        coarse.location.position.latitude = lat
        coarse.location.position.longitude = lng
    if found.HasField("age"):
        coarse.age.seconds = round(found.age.seconds + found.age.nanos / 1e9)
    return coarse


def snap_to_cell(lat: float, lng: float) -> tuple[float, float]:
    """The centre of the grid cell holding a point; cells are about COARSE_CELL_M square. Rows are
    a fixed number of degrees of latitude; each row is cut into a whole number of cells at least
    COARSE_CELL_M wide, so cells keep their width in metres away from the equator and the grid
    wraps across the antimeridian without a seam (near a pole a row is a single cell)."""
    row = round(lat / _CELL_LAT_DEG)
    snapped_lat = max(-90.0, min(90.0, row * _CELL_LAT_DEG))
    # The cells depend only on the row, so every point of a row shares them.
    cos_lat = math.cos(math.radians(snapped_lat))
    cells_in_row = max(1, int(360.0 * cos_lat / _CELL_LAT_DEG))
    lng_step = 360.0 / cells_in_row
    snapped_lng = normalize_lng(round(lng / lng_step) * lng_step)
    return snapped_lat, snapped_lng


# --- shared -----------------------------------------------------------------------------------


def _require_self(who: Identity, role: Role, claimed_id: str, rule: str, source: str) -> None:
    """The caller has `role` and acts under their own id."""
    if who.role is not role:
        raise PermissionDenied(f"{rule}: token role is {who.role.value}, not {role.value}")
    if claimed_id != who.sub:
        field = f"{role.value}_id"
        raise PermissionDenied(
            f"{rule}: token sub is {_id(who.sub)}, {source} {field} is {_id(claimed_id)}"
        )


def _require_staff(who: Identity, rule: str) -> None:
    if who.role not in STAFF:
        raise PermissionDenied(f"{rule}: token role is {who.role.value}")


def _is_party(who: Identity, ride: ride_pb.Ride) -> bool:
    """The caller is the ride's rider, or its assigned driver."""
    if who.role is Role.RIDER:
        return ride.rider_id == who.sub
    return who.role is Role.DRIVER and bool(ride.driver_id) and ride.driver_id == who.sub


def _party_name(party: ride_pb.Party.ValueType) -> str:
    """PARTY_RIDER, or the number of a value this build does not know (hostile input)."""
    try:
        return ride_pb.Party.Name(party)
    except ValueError:
        return f"unknown party {party}"


def _a(role: Role) -> str:
    """'a rider', 'an ops' caller: the role with its article, to start a rule."""
    return f"an {role.value}" if role is Role.OPS else f"a {role.value}"


def _id(value: str) -> str:
    """An id quoted for a message, cut short when hostile input makes it long."""
    if len(value) <= _MAX_SHOWN_ID_CHARS:
        return repr(value)
    return repr(value[:_MAX_SHOWN_ID_CHARS]) + f"… ({len(value)} characters)"
