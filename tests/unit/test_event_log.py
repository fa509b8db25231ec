"""The pure parts of the event log: resume tokens and whether a token can still be resumed."""

from __future__ import annotations

import pytest

from services.domain.errors import FailedPrecondition, InvalidArgument
from services.live.events import LoggedEvent, LogState, Position, check_resumable, parse_token


def event(partition: int, offset: tuple[int, int], ordinal: int, epoch: str = "ep") -> LoggedEvent:
    return LoggedEvent(partition, offset, epoch, "geofence.enter", {}, {}, "", ordinal)


def test_a_token_round_trips_every_partitions_position() -> None:
    position = Position(["a", ""], [(5, 1), (0, 0)], [7, 0])
    position.advance(event(1, (9, 0), 3, "b"))
    assert parse_token(position.token(), 2) == Position(["a", "b"], [(5, 1), (9, 0)], [7, 3])
    assert "=" not in position.token()  # safe in URLs and grpcurl arguments as it is


def test_positions_know_which_events_are_new_per_partition() -> None:
    position = Position(["", ""], [(5, 0), (7, 0)], [0, 0])
    assert position.is_new(event(0, (5, 1), 1))
    assert not position.is_new(event(0, (5, 0), 1))
    assert not position.is_new(event(1, (6, 9), 1))


@pytest.mark.parametrize(
    "token", ["", "x", "bm90IGpzb24", "WzIsW10sW10sW11d", "WzEsWyJhIl0sW10sW11d"]
)
def test_anything_but_a_token_is_invalid(token: str) -> None:
    with pytest.raises(InvalidArgument, match="resume_token is not a token"):
        parse_token(token, 1)


def test_a_token_of_another_partition_count_is_a_failed_precondition() -> None:
    token = Position(["a"], [(1, 0)], [1]).token()
    with pytest.raises(FailedPrecondition, match="1 partitions; this one has 12"):
        parse_token(token, 12)


def state(epoch: str = "ep", first: tuple[int, int] | None = (10, 0), trimmed: int = 0) -> LogState:
    return LogState(epoch, first, (20, 0), 30, trimmed)


def test_a_token_is_resumable_while_nothing_after_it_was_trimmed() -> None:
    check_resumable(Position(["ep"], [(9, 0)], [5]), [state(trimmed=5)])
    check_resumable(Position([""], [(0, 0)], [0]), [state()])  # a log that had no events then


def test_a_token_older_than_the_trimmed_events_names_the_oldest_kept() -> None:
    with pytest.raises(FailedPrecondition, match="retention") as refused:
        check_resumable(Position(["ep"], [(9, 0)], [5]), [state(trimmed=6)])
    assert "the oldest event kept there is 0:10-0" in str(refused.value)
    assert "without a resume_token" in str(refused.value)


def test_a_token_from_before_the_log_was_lost_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="reset"):
        check_resumable(Position(["old"], [(9, 0)], [5]), [state(epoch="new", first=None)])
