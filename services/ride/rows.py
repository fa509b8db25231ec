"""How rides, ride events and chat messages map between PostgreSQL rows and protos."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import LatLng
from services.domain.errors import FailedPrecondition
from services.ride import states
from services.ride.states import Party, RideState

# Points are stored as geography; ST_Y/ST_X read them back as latitude/longitude.
COLUMNS = """ride_id, rider_id, driver_id, state,
    ST_Y(pickup::geometry) AS pickup_lat, ST_X(pickup::geometry) AS pickup_lng,
    ST_Y(dropoff::geometry) AS dropoff_lat, ST_X(dropoff::geometry) AS dropoff_lng,
    create_time, update_time, cancelled_by, end_reason, offered_driver_id, offer_expire_time,
    candidates, declined, dispatch_deadline, auto_arrive"""
# ST_MakePoint takes (x, y) = (longitude, latitude). It is strict: NULL coordinates, NULL point.
POINT = "ST_SetSRID(ST_MakePoint({lng}::float8, {lat}::float8), 4326)::geography"

CHAT_COLUMNS = "ride_id, sequence, sender, sender_id, text, client_message_id, send_time"


@dataclass(frozen=True, slots=True)
class RideEvent:
    """One row of a ride's transition log (offers and declines appear as REQUESTED → REQUESTED)."""

    from_state: RideState
    to_state: RideState
    party: Party
    actor_id: str
    reason: str
    position: LatLng | None
    event_time: datetime


Moment = datetime | float
"""An aware datetime, or seconds since the epoch (what dispatch's clock gives)."""


def at(moment: Moment) -> datetime:
    """The moment as an aware datetime."""
    if isinstance(moment, datetime):
        return moment
    return datetime.fromtimestamp(moment, UTC)


def new_ride_id() -> str:
    """A fresh ride id, safe in Redis keys and channel names (validate_id's alphabet)."""
    return f"r-{uuid.uuid4().hex}"


def name(state: RideState) -> str:
    """How a state is stored: its proto enum name."""
    return pb.RideState.Name(state)


def ride(row: Any) -> pb.Ride:
    """A Ride from a row of COLUMNS."""
    ride = pb.Ride(
        ride_id=row["ride_id"],
        rider_id=row["rider_id"],
        driver_id=row["driver_id"] or "",
        state=pb.RideState.Value(row["state"]),
        pickup=LatLng(latitude=row["pickup_lat"], longitude=row["pickup_lng"]),
        dropoff=LatLng(latitude=row["dropoff_lat"], longitude=row["dropoff_lng"]),
        cancelled_by=pb.Party.Value(row["cancelled_by"] or "PARTY_UNSPECIFIED"),
        end_reason=row["end_reason"],
        offered_driver_id=row["offered_driver_id"] or "",
        auto_arrive=row["auto_arrive"],
    )
    ride.create_time.FromDatetime(row["create_time"])
    ride.update_time.FromDatetime(row["update_time"])
    return ride


def chat_message(row: Any) -> pb.ChatMessage:
    """A ChatMessage from a row of CHAT_COLUMNS."""
    message = pb.ChatMessage(
        ride_id=row["ride_id"],
        sequence=row["sequence"],
        sender=pb.Party.Value(row["sender"]),
        sender_id=row["sender_id"],
        text=row["text"],
        client_message_id=row["client_message_id"] or "",
    )
    message.send_time.FromDatetime(row["send_time"])
    return message


def event(row: Any) -> RideEvent:
    """A RideEvent from a ride_events row with its position as lat/lng."""
    position = None
    if row["lat"] is not None:
        position = LatLng(latitude=row["lat"], longitude=row["lng"])
    return RideEvent(
        from_state=pb.RideState.Value(row["from_state"] or "RIDE_STATE_UNSPECIFIED"),
        to_state=pb.RideState.Value(row["to_state"]),
        party=pb.Party.Value(row["party"]),
        actor_id=row["actor_id"],
        reason=row["reason"],
        position=position,
        event_time=row["event_time"],
    )


def check_offer(row: Any, driver_id: str, now: datetime | None, action: str) -> None:
    """Raises FailedPrecondition unless the ride is REQUESTED and offered to this driver (and,
    with `now`, the offer has not lapsed), saying which of these fails."""
    ride_id = row["ride_id"]
    current = pb.RideState.Value(row["state"])
    if current in states.ACTIVE | {states.COMPLETED} and row["driver_id"] != driver_id:
        raise FailedPrecondition(
            f"ride {ride_id} is {states.state_name(current)} with another driver; "
            f"{action} needs REQUESTED"
        )
    if current != states.REQUESTED:
        raise FailedPrecondition(
            f"ride {ride_id} is {states.state_name(current)}; {action} needs REQUESTED"
        )
    if row["offered_driver_id"] != driver_id:
        what = "was declined by" if driver_id in row["declined"] else "is not offered to"
        raise FailedPrecondition(f"ride {ride_id} {what} driver {driver_id}")
    expires = row["offer_expire_time"]
    if now is not None and expires is not None and expires <= now:
        raise FailedPrecondition(
            f"the offer of ride {ride_id} to driver {driver_id} lapsed at "
            f"{expires.astimezone(UTC):%H:%M:%S} UTC; it goes to the next driver"
        )
