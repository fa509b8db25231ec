"""Chat's pure parts: who may join, what may be sent, the delivery order and the inbox."""

from __future__ import annotations

import pytest

from ridemesh.v1 import ride_service_pb2 as pb
from services.domain.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from services.domain.parties import Participant
from services.ride.chat import (
    ChatInbox,
    Step,
    authorize,
    check_open,
    claimed_participant,
    next_step,
    validate_send,
)

RIDE = pb.Ride(ride_id="r1", rider_id="u1", driver_id="d1", state=pb.RIDE_STATE_IN_PROGRESS)


def message(sequence: int) -> pb.ChatMessage:
    return pb.ChatMessage(ride_id="r1", sequence=sequence, text=f"m{sequence}")


def test_the_join_states_who_the_caller_is() -> None:
    join = pb.ChatJoin(ride_id="r1", party=pb.PARTY_DRIVER, participant_id="d1")
    assert claimed_participant(join) == Participant(pb.PARTY_DRIVER, "d1")


@pytest.mark.parametrize(
    ("party", "participant_id", "fault"),
    [
        (pb.PARTY_UNSPECIFIED, "u1", "party"),
        (pb.PARTY_SYSTEM, "u1", "party"),
        (pb.PARTY_RIDER, "", "participant_id is required"),
        (pb.PARTY_RIDER, "has space", "participant_id"),
    ],
)
def test_a_join_without_a_valid_party_or_id_is_invalid(
    party: pb.Party.ValueType, participant_id: str, fault: str
) -> None:
    join = pb.ChatJoin(ride_id="r1", party=party, participant_id=participant_id)
    with pytest.raises(InvalidArgument, match=fault):
        claimed_participant(join)


def test_the_rider_and_the_assigned_driver_may_chat() -> None:
    authorize(RIDE, Participant(pb.PARTY_RIDER, "u1"))
    authorize(RIDE, Participant(pb.PARTY_DRIVER, "d1"))


@pytest.mark.parametrize(
    "who",
    [
        Participant(pb.PARTY_RIDER, "stranger"),
        Participant(pb.PARTY_DRIVER, "stranger"),
        # Right id, wrong role: a rider cannot pose as the driver and the other way round.
        Participant(pb.PARTY_DRIVER, "u1"),
        Participant(pb.PARTY_RIDER, "d1"),
    ],
)
def test_anyone_else_is_denied(who: Participant) -> None:
    with pytest.raises(PermissionDenied, match="not the rider or the assigned driver"):
        authorize(RIDE, who)


def test_no_driver_may_chat_before_one_is_assigned() -> None:
    waiting = pb.Ride(ride_id="r2", rider_id="u1", state=pb.RIDE_STATE_REQUESTED)
    with pytest.raises(PermissionDenied):
        authorize(waiting, Participant(pb.PARTY_DRIVER, ""))


@pytest.mark.parametrize(
    ("text", "client_id", "fault"),
    [
        ("", "c1", "text must be 1 to 2000"),
        ("x" * 2001, "c1", "text must be 1 to 2000"),
        ("hi", "", "client_message_id is required"),
        ("hi", "c" * 129, "at most 128"),
    ],
)
def test_a_send_out_of_bounds_is_invalid(text: str, client_id: str, fault: str) -> None:
    with pytest.raises(InvalidArgument, match=fault):
        validate_send(pb.ChatSend(text=text, client_message_id=client_id))


def test_a_send_at_the_bounds_is_fine() -> None:
    validate_send(pb.ChatSend(text="x", client_message_id="c"))
    validate_send(pb.ChatSend(text="é" * 2000, client_message_id="c" * 128))


@pytest.mark.parametrize(
    "state", [pb.RIDE_STATE_COMPLETED, pb.RIDE_STATE_CANCELLED, pb.RIDE_STATE_EXPIRED]
)
def test_an_ended_ride_takes_no_messages(state: pb.RideState.ValueType) -> None:
    with pytest.raises(FailedPrecondition, match="chat is closed"):
        check_open(pb.Ride(ride_id="r1", state=state))


def test_an_open_ride_takes_messages() -> None:
    check_open(RIDE)
    check_open(pb.Ride(ride_id="r1", state=pb.RIDE_STATE_REQUESTED))


def test_the_next_message_is_delivered_an_old_one_skipped_and_a_gap_filled() -> None:
    assert next_step(4, message(5)) is Step.DELIVER
    assert next_step(4, message(4)) is Step.SKIP
    assert next_step(4, message(1)) is Step.SKIP
    assert next_step(4, message(6)) is Step.FILL
    assert next_step(4, None) is Step.FILL


async def test_the_inbox_drops_the_oldest_when_full_keeping_the_newest() -> None:
    inbox = ChatInbox(depth=3)
    for sequence in range(1, 11):
        inbox.put(message(sequence))
    got = [await inbox.get(1.0) for _ in range(3)]
    assert [m.sequence for m in got if m is not None] == [8, 9, 10]
    # After the drop the first seen is 8 while 0 was delivered: a gap, so the store refills.
    assert next_step(0, got[0]) is Step.FILL


async def test_the_inbox_times_out_to_none_and_raises_a_request_failure() -> None:
    inbox = ChatInbox()
    assert await inbox.get(0.01) is None
    inbox.put(message(1))
    inbox.fail(InvalidArgument("bad send"))
    with pytest.raises(InvalidArgument, match="bad send"):
        await inbox.get(1.0)
