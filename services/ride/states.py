"""The ride lifecycle: which state may follow which, and who may move a ride there."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

from ridemesh.v1 import ride_service_pb2 as pb
from services.domain.errors import FailedPrecondition, InvalidArgument, PermissionDenied

RideState: TypeAlias = pb.RideState.ValueType
Party: TypeAlias = pb.Party.ValueType

REQUESTED = pb.RIDE_STATE_REQUESTED
DRIVER_ASSIGNED = pb.RIDE_STATE_DRIVER_ASSIGNED
DRIVER_ARRIVED = pb.RIDE_STATE_DRIVER_ARRIVED
IN_PROGRESS = pb.RIDE_STATE_IN_PROGRESS
COMPLETED = pb.RIDE_STATE_COMPLETED
CANCELLED = pb.RIDE_STATE_CANCELLED
EXPIRED = pb.RIDE_STATE_EXPIRED

RIDER = pb.PARTY_RIDER
DRIVER = pb.PARTY_DRIVER
SYSTEM = pb.PARTY_SYSTEM

ALL_STATES: tuple[RideState, ...] = (
    REQUESTED,
    DRIVER_ASSIGNED,
    DRIVER_ARRIVED,
    IN_PROGRESS,
    COMPLETED,
    CANCELLED,
    EXPIRED,
)
PARTIES: tuple[Party, ...] = (RIDER, DRIVER, SYSTEM)
TERMINAL: frozenset[RideState] = frozenset({COMPLETED, CANCELLED, EXPIRED})
# A driver in one of these holds the ride; the database lets a driver hold one such ride at most.
ACTIVE: frozenset[RideState] = frozenset({DRIVER_ASSIGNED, DRIVER_ARRIVED, IN_PROGRESS})

# For each target: the RPC (or process) that moves a ride there, and per party the states it
# may start from. A party missing from a target's map may never make that transition.
_ACTION: Mapping[RideState, str] = {
    DRIVER_ASSIGNED: "AcceptRide",
    DRIVER_ARRIVED: "MarkDriverArrived",
    IN_PROGRESS: "StartRide",
    COMPLETED: "CompleteRide",
    CANCELLED: "CancelRide",
    EXPIRED: "dispatch expiry",
}
_BEFORE_COMPLETION = frozenset({REQUESTED, *ACTIVE})
_FROM: Mapping[RideState, Mapping[Party, frozenset[RideState]]] = {
    DRIVER_ASSIGNED: {DRIVER: frozenset({REQUESTED})},
    DRIVER_ARRIVED: {DRIVER: frozenset({DRIVER_ASSIGNED})},
    IN_PROGRESS: {DRIVER: frozenset({DRIVER_ARRIVED})},
    COMPLETED: {DRIVER: frozenset({IN_PROGRESS})},
    # The rider may give up any time before completion; a driver only once they hold the ride.
    CANCELLED: {RIDER: _BEFORE_COMPLETION, DRIVER: ACTIVE, SYSTEM: _BEFORE_COMPLETION},
    EXPIRED: {SYSTEM: frozenset({REQUESTED})},
}


def state_name(state: RideState) -> str:
    """`DRIVER_ASSIGNED` for RIDE_STATE_DRIVER_ASSIGNED: how messages name a state."""
    return pb.RideState.Name(state).removeprefix("RIDE_STATE_")


def party_name(party: Party) -> str:
    """`rider` for PARTY_RIDER."""
    return pb.Party.Name(party).removeprefix("PARTY_").lower()


def action_name(target: RideState) -> str:
    """The RPC that moves a ride to `target`."""
    return _ACTION[target]


def allowed_targets(current: RideState, actor: Party) -> frozenset[RideState]:
    """Every state `actor` may move a ride in `current` to."""
    return frozenset(t for t, by in _FROM.items() if current in by.get(actor, frozenset()))


def is_allowed(current: RideState, target: RideState, actor: Party) -> bool:
    return current in _FROM.get(target, {}).get(actor, frozenset())


def check_transition(
    current: RideState, target: RideState, actor: Party, *, ride_id: str = ""
) -> None:
    """Raises unless `actor` may move a ride from `current` to `target`.

    FailedPrecondition when the ride is in the wrong state (the message names the current state
    and the states the action needs); PermissionDenied when the party may never do it;
    InvalidArgument for an unspecified party or a target nothing may move a ride to.
    """
    if actor not in PARTIES:
        raise InvalidArgument("the acting party must be the rider, the driver or the system")
    sources = _FROM.get(target)
    if sources is None:
        raise InvalidArgument(f"no ride may be moved to {pb.RideState.Name(target)}")
    allowed_from = sources.get(actor)
    if allowed_from is None:
        raise PermissionDenied(f"{action_name(target)} is not for the {party_name(actor)}")
    if current in allowed_from:
        return
    ride = f"ride {ride_id}" if ride_id else "the ride"
    needs = " or ".join(state_name(s) for s in ALL_STATES if s in allowed_from)
    by = f" by the {party_name(actor)}" if target == CANCELLED else ""
    raise FailedPrecondition(
        f"{ride} is {state_name(current)}; {action_name(target)}{by} needs {needs}"
    )
