"""One driver stream's state: admission order, seq rules, throttling and the durable watermark."""

from __future__ import annotations

import pytest

from ridemesh.v1.common_pb2 import LatLng
from ridemesh.v1.location_service_pb2 import LocationUpdate
from services.domain.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.domain.validation import FixLimits
from services.live.ingest import parse_stream_id
from services.location.session import DriverSession
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
    session.accepted(5, (1, 0))
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
    session.accepted(1, (1, 0))
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


def test_accepted_moves_seqs_and_asks_for_an_ack() -> None:
    session = _bound()
    session.accepted(7, (1000, 0))
    assert (session.last_seq, session.accepted_seq, session.durable_seq) == (7, 7, 0)
    assert session.ack_due
    assert not session.fully_durable


def _durability(session: DriverSession) -> tuple[int, bool, bool]:
    """(durable_seq, ack_due, fully_durable), read afresh after each step."""
    return session.durable_seq, session.ack_due, session.fully_durable


def test_advance_moves_durable_seq_only_past_entries_below_the_watermark() -> None:
    session = _bound()
    session.accepted(1, (1000, 0))
    session.accepted(2, (1000, 1))
    session.accepted(3, (1001, 0))
    session.ack_due = False

    session.advance((1000, 1))  # (1000, 1) itself is not yet committed
    assert _durability(session) == (1, True, False)

    session.ack_due = False
    session.advance((1000, 1))
    assert _durability(session) == (1, False, False)

    session.advance((1001, 0))
    assert _durability(session) == (2, True, False)
    session.advance((1001, 1))
    assert _durability(session) == (3, True, True)
    assert session.accepted_seq == 3


def test_advance_compares_ids_by_milliseconds_first() -> None:
    session = _bound()
    session.accepted(1, (999, 50))
    session.advance((1000, 0))
    assert session.durable_seq == 1


def test_advance_below_every_entry_changes_nothing() -> None:
    session = _bound()
    session.accepted(1, (1000, 0))
    session.ack_due = False
    session.advance((999, 9))
    assert session.durable_seq == 0
    assert not session.ack_due
    assert not session.fully_durable


def test_advance_none_does_nothing() -> None:
    session = _bound()
    session.accepted(1, (1000, 0))
    session.ack_due = False
    session.advance(None)
    assert session.durable_seq == 0
    assert not session.ack_due
    assert not session.fully_durable


def test_advance_on_an_empty_session_keeps_it_quiet() -> None:
    session = _bound()
    session.advance((10**13, 0))
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
