"""The ride state machine: the transition table, who may act, and the messages people read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ridemesh.v1 import ride_service_pb2 as pb
from services.domain.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
)
from services.ride import states
from services.ride.states import (
    ACTIVE,
    ALL_STATES,
    CANCELLED,
    COMPLETED,
    DRIVER,
    DRIVER_ARRIVED,
    DRIVER_ASSIGNED,
    EXPIRED,
    IN_PROGRESS,
    PARTIES,
    REQUESTED,
    RIDER,
    SYSTEM,
    TERMINAL,
    Party,
    RideState,
    check_transition,
)

TARGETS = (DRIVER_ASSIGNED, DRIVER_ARRIVED, IN_PROGRESS, COMPLETED, CANCELLED, EXPIRED)

# The lifecycle written out edge by edge, independently of the module's own tables.
EXPECTED: set[tuple[RideState, RideState, Party]] = {
    (REQUESTED, DRIVER_ASSIGNED, DRIVER),
    (DRIVER_ASSIGNED, DRIVER_ARRIVED, DRIVER),
    (DRIVER_ARRIVED, IN_PROGRESS, DRIVER),
    (IN_PROGRESS, COMPLETED, DRIVER),
    (REQUESTED, EXPIRED, SYSTEM),
    *((s, CANCELLED, RIDER) for s in (REQUESTED, DRIVER_ASSIGNED, DRIVER_ARRIVED, IN_PROGRESS)),
    *((s, CANCELLED, SYSTEM) for s in (REQUESTED, DRIVER_ASSIGNED, DRIVER_ARRIVED, IN_PROGRESS)),
    *((s, CANCELLED, DRIVER) for s in (DRIVER_ASSIGNED, DRIVER_ARRIVED, IN_PROGRESS)),
}

state_st = st.sampled_from(ALL_STATES)
target_st = st.sampled_from(TARGETS)
party_st = st.sampled_from(PARTIES)


def _allowed(current: RideState, target: RideState, actor: Party) -> bool:
    try:
        check_transition(current, target, actor)
    except DomainError:
        return False
    return True


@pytest.mark.parametrize("current", ALL_STATES)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("actor", PARTIES)
def test_check_transition_matches_the_lifecycle_exactly(
    current: RideState, target: RideState, actor: Party
) -> None:
    assert _allowed(current, target, actor) == ((current, target, actor) in EXPECTED)
    assert states.is_allowed(current, target, actor) == ((current, target, actor) in EXPECTED)


@given(st.lists(st.tuples(target_st, party_st), max_size=30))
def test_random_actions_only_follow_edges_of_the_table(
    actions: list[tuple[RideState, Party]],
) -> None:
    state = REQUESTED
    visited = [state]
    for target, actor in actions:
        if _allowed(state, target, actor):
            assert (state, target, actor) in EXPECTED
            state = target
            visited.append(state)
    # States only move forward: no state is ever entered twice, nothing returns to REQUESTED.
    assert len(visited) == len(set(visited))
    assert all(v != REQUESTED for v in visited[1:])
    # A terminal state, once reached, is the last one.
    assert all(v not in TERMINAL for v in visited[:-1])


@given(st.sampled_from(sorted(TERMINAL)), target_st, party_st)
def test_terminal_states_accept_nothing(
    current: RideState, target: RideState, actor: Party
) -> None:
    with pytest.raises((FailedPrecondition, PermissionDenied)):
        check_transition(current, target, actor)
    assert states.allowed_targets(current, actor) == frozenset()


@given(state_st, party_st)
def test_allowed_targets_agree_with_check_transition(current: RideState, actor: Party) -> None:
    expected = frozenset(t for t in TARGETS if (current, t, actor) in EXPECTED)
    assert states.allowed_targets(current, actor) == expected


@given(state_st, target_st)
def test_an_unspecified_party_is_an_invalid_argument(current: RideState, target: RideState) -> None:
    with pytest.raises(InvalidArgument):
        check_transition(current, target, pb.PARTY_UNSPECIFIED)


@pytest.mark.parametrize("target", [pb.RIDE_STATE_UNSPECIFIED, REQUESTED])
def test_nothing_moves_a_ride_back_to_requested_or_unspecified(target: RideState) -> None:
    with pytest.raises(InvalidArgument):
        check_transition(REQUESTED, target, SYSTEM)


def test_wrong_state_names_the_current_state_and_what_is_needed() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        check_transition(DRIVER_ASSIGNED, IN_PROGRESS, DRIVER, ride_id="r-1")
    assert str(caught.value) == "ride r-1 is DRIVER_ASSIGNED; StartRide needs DRIVER_ARRIVED"


def test_a_driver_cannot_cancel_before_holding_the_ride() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        check_transition(REQUESTED, CANCELLED, DRIVER, ride_id="r-2")
    message = str(caught.value)
    assert message.startswith("ride r-2 is REQUESTED; CancelRide by the driver needs ")
    assert "DRIVER_ASSIGNED or DRIVER_ARRIVED or IN_PROGRESS" in message


def test_nobody_cancels_a_completed_ride() -> None:
    for actor in PARTIES:
        with pytest.raises(FailedPrecondition, match="ride r-3 is COMPLETED; CancelRide"):
            check_transition(COMPLETED, CANCELLED, actor, ride_id="r-3")


@pytest.mark.parametrize(
    ("target", "actor"),
    [(DRIVER_ASSIGNED, RIDER), (IN_PROGRESS, RIDER), (COMPLETED, SYSTEM), (EXPIRED, DRIVER)],
)
def test_a_party_that_may_never_act_is_denied(target: RideState, actor: Party) -> None:
    with pytest.raises(PermissionDenied, match=states.action_name(target)):
        check_transition(REQUESTED, target, actor)


def test_active_states_are_the_ones_a_driver_holds() -> None:
    assert {DRIVER_ASSIGNED, DRIVER_ARRIVED, IN_PROGRESS} == ACTIVE
    assert {COMPLETED, CANCELLED, EXPIRED} == TERMINAL
    assert states.state_name(DRIVER_ARRIVED) == "DRIVER_ARRIVED"
    assert states.party_name(RIDER) == "rider"
