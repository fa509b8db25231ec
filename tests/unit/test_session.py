"""One driver stream's state: admission order, seq rules, throttling and the durable watermark."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ridemesh.v1.common_pb2 import LatLng
from ridemesh.v1.location_service_pb2 import LocationUpdate
from services.domain.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.domain.validation import FixLimits
from services.live.ingest import parse_stream_id
from services.location.session import DriverSession, FixKey
from services.location.throttle import TokenBucket

NOW = 1_800_000_000.0


def _fix(seq: int, driver_id: str = "d1", lat: float = 52.5) -> LocationUpdate:
    update = LocationUpdate(
        driver_id=driver_id, position=LatLng(latitude=lat, longitude=13.4), seq=seq
    )
    update.recorded_at.seconds = int(NOW)
    return update


def _session(rate: float = 1000.0, burst: int = 1000) -> DriverSession:
    return DriverSession(FixLimits(), TokenBucket(rate, burst))


def _bound(
    driver_id: str = "d1", last_stored_seq: int = 0, rate: float = 1000.0, burst: int = 1000
) -> DriverSession:
    session = _session(rate, burst)
    session.bind(driver_id, last_stored_seq)
    return session


def test_a_new_session_is_empty() -> None:
    session = _session()
    assert session.driver_id is None
    assert (session.last_seq, session.accepted_seq, session.durable_seq) == (0, 0, 0)
    assert not session.ack_due
    assert session.fully_durable


def test_admit_returns_the_recorded_time() -> None:
    assert _bound().admit(_fix(1), NOW, 0.0) == NOW


def test_a_fix_for_another_driver_is_invalid() -> None:
    session = _bound("d1")
    with pytest.raises(InvalidArgument, match=r"driver_id 'd2' differs .* driver 'd1'"):
        session.admit(_fix(1, driver_id="d2"), NOW, 0.0)


def test_driver_mismatch_is_checked_before_the_seq() -> None:
    session = _bound("d1", last_stored_seq=10)
    with pytest.raises(InvalidArgument):
        session.admit(_fix(1, driver_id="d2"), NOW, 0.0)


def test_invalid_content_is_checked_before_the_seq() -> None:
    session = _bound("d1", last_stored_seq=10)
    with pytest.raises(InvalidArgument, match="latitude"):
        session.admit(_fix(5, lat=95.0), NOW, 0.0)


def test_an_unbound_session_takes_any_driver() -> None:
    assert _session().admit(_fix(1, driver_id="anyone"), NOW, 0.0) == NOW


@pytest.mark.parametrize("seq", [1, 41, 42])
def test_seq_not_above_the_stored_seq_fails_precondition(seq: int) -> None:
    session = _bound(last_stored_seq=42)
    with pytest.raises(FailedPrecondition, match=f"seq {seq} is not greater than .* 42"):
        session.admit(_fix(seq), NOW, 0.0)


def test_seq_above_the_stored_seq_is_admitted() -> None:
    _bound(last_stored_seq=42).admit(_fix(43), NOW, 0.0)


def test_seq_must_increase_after_each_accepted_fix() -> None:
    session = _bound()
    session.admit(_fix(5), NOW, 0.0)
    _accept(session, 5, (1, 0))
    for seq in (5, 4):
        with pytest.raises(FailedPrecondition):
            session.admit(_fix(seq), NOW, 0.0)
    session.admit(_fix(6), NOW, 0.0)


def test_admit_alone_does_not_consume_the_seq() -> None:
    # Until the live store took the fix (`accepted`), the same seq may come again.
    session = _bound()
    session.admit(_fix(1), NOW, 0.0)
    session.admit(_fix(1), NOW, 0.0)
    assert session.last_seq == 0


def test_a_throttled_fix_is_resource_exhausted_and_does_not_consume_its_seq() -> None:
    session = _bound(rate=1.0, burst=1)
    session.admit(_fix(1), NOW, 10.0)
    _accept(session, 1, (1, 0))
    with pytest.raises(ResourceExhausted, match=r"at most 1 per second .* seq 2 was dropped"):
        session.admit(_fix(2), NOW, 10.5)
    assert session.last_seq == 1
    # Once a token has refilled, the same seq goes through.
    assert session.admit(_fix(2), NOW, 11.5) == NOW


def test_a_rejected_seq_does_not_take_a_token() -> None:
    session = _bound(last_stored_seq=5, rate=1.0, burst=1)
    with pytest.raises(FailedPrecondition):
        session.admit(_fix(5), NOW, 0.0)
    session.admit(_fix(6), NOW, 0.0)


def test_accepted_moves_seqs_and_waits_for_durability_before_an_ack() -> None:
    session = _bound()
    _accept(session, 7, (1000, 0), at_s=0.0)
    assert (session.last_seq, session.accepted_seq, session.durable_seq) == (7, 7, 0)
    assert not session.fully_durable
    # Not at once: the durable ack, a moment later, will carry the accepted seq too.
    assert not session.ack_wanted(0.5, accepted_every_s=2.0)
    # Durability is slow: the accepted seq goes out alone, once per interval.
    assert session.ack_wanted(2.0, accepted_every_s=2.0)
    assert not session.ack_wanted(2.5, accepted_every_s=2.0)


def test_a_durable_ack_goes_at_once_and_carries_the_accepted_news() -> None:
    session = _bound()
    _accept(session, 1, (1000, 0))
    _accept(session, 2, (1000, 1))
    session.settle({_key(1)}, (1000, 1), 0.1, LOST_AFTER)
    assert session.ack_wanted(0.1, accepted_every_s=2.0)
    assert not session.ack_wanted(0.2, accepted_every_s=2.0)  # nothing new since


def _durability(session: DriverSession) -> tuple[int, bool, bool]:
    """(durable_seq, ack_due, fully_durable), read afresh after each step."""
    return session.durable_seq, session.ack_due, session.fully_durable


LOST_AFTER = 120.0


def _key(seq: int) -> FixKey:
    return ("d1", datetime(2027, 1, 1, tzinfo=UTC), seq)


def _accept(session: DriverSession, seq: int, entry_id: tuple[int, int], at_s: float = 0.0) -> None:
    session.accepted(seq, entry_id, _key(seq), at_s)


def test_durable_seq_moves_only_past_fixes_postgresql_holds() -> None:
    session = _bound()
    _accept(session, 1, (1000, 0))
    _accept(session, 2, (1000, 1))
    _accept(session, 3, (1001, 0))
    session.ack_due = False

    # The watermark says (1000, 0) must be stored; PostgreSQL confirms it.
    assert session.due((1000, 1), 1.0, LOST_AFTER) == [_key(1)]
    assert session.settle({_key(1)}, (1000, 1), 1.0, LOST_AFTER) is None
    assert _durability(session) == (1, True, False)

    # Stored but not yet due: settled all the same (the check only reads what it is given).
    session.ack_due = False
    assert session.settle({_key(2), _key(3)}, (1000, 1), 1.0, LOST_AFTER) is None
    assert _durability(session) == (3, True, True)
    assert session.accepted_seq == 3


def test_the_watermark_alone_never_makes_a_fix_durable() -> None:
    # Redis says everything below (2000, 0) is committed, but PostgreSQL holds none of it.
    session = _bound()
    _accept(session, 1, (1000, 0))
    _accept(session, 2, (1001, 0))
    session.ack_due = False
    lost = session.settle(set(), (2000, 0), 1.0, LOST_AFTER)
    assert lost is not None
    assert lost.seq == 1
    assert _durability(session) == (0, False, False)


def test_a_lost_fix_stops_durable_seq_below_it() -> None:
    # Seq 2 was lost with Redis's data; seq 3, accepted after Redis came back, is stored.
    session = _bound()
    _accept(session, 1, (1000, 0))
    _accept(session, 2, (1000, 1))
    _accept(session, 3, (5, 0))  # a fresh stream after an empty restart: smaller ids
    lost = session.settle({_key(1), _key(3)}, (1000, 5), 1.0, LOST_AFTER)
    assert lost is not None
    assert lost.seq == 2
    assert session.durable_seq == 1


def test_a_fix_not_yet_due_is_waited_for() -> None:
    session = _bound()
    _accept(session, 1, (1000, 0))
    session.ack_due = False
    assert session.due((999, 9), 1.0, LOST_AFTER) == []
    assert session.settle(set(), (999, 9), 1.0, LOST_AFTER) is None
    assert session.settle(set(), None, 1.0, LOST_AFTER) is None
    assert _durability(session) == (0, False, False)


def test_an_overdue_fix_is_checked_and_given_up_even_without_a_watermark() -> None:
    session = _bound()
    _accept(session, 1, (1000, 0), at_s=10.0)
    assert session.due(None, 10.0 + LOST_AFTER, LOST_AFTER) == [_key(1)]
    lost = session.settle(set(), None, 10.0 + LOST_AFTER, LOST_AFTER)
    assert lost is not None
    assert lost.seq == 1
    # Found stored after all (it was only slow): durable, not lost.
    assert session.settle({_key(1)}, None, 10.0 + LOST_AFTER, LOST_AFTER) is None
    assert session.durable_seq == 1


def test_ids_compare_by_milliseconds_first() -> None:
    session = _bound()
    _accept(session, 1, (999, 50))
    assert session.due((1000, 0), 0.0, LOST_AFTER) == [_key(1)]


def test_settling_an_empty_session_keeps_it_quiet() -> None:
    session = _bound()
    assert session.settle(set(), (10**13, 0), 0.0, LOST_AFTER) is None
    assert session.durable_seq == 0
    assert not session.ack_due
    assert session.fully_durable


def test_parse_stream_id_from_bytes_and_str() -> None:
    assert parse_stream_id(b"1700000000000-3") == (1_700_000_000_000, 3)
    assert parse_stream_id("1700000000000-3") == (1_700_000_000_000, 3)
    assert parse_stream_id("0-0") == (0, 0)


def test_parse_stream_id_without_a_sequence_part() -> None:
    assert parse_stream_id("1700000000000") == (1_700_000_000_000, 0)


def test_parsed_stream_ids_order_numerically() -> None:
    # As strings "9-0" > "10-0"; as ids 9 ms is earlier.
    assert parse_stream_id("9-0") < parse_stream_id("10-0")
    assert parse_stream_id("10-9") < parse_stream_id("10-10")


def test_parse_stream_id_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        parse_stream_id("abc-1")
