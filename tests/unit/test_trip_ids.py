"""Trip ids round-trip, and anything else is refused with INVALID_ARGUMENT."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.domain.errors import InvalidArgument
from services.domain.trip_ids import TripSpan, decode_trip_id, encode_trip_id


def test_a_trip_id_names_its_driver_and_both_times_to_the_microsecond() -> None:
    span = TripSpan(
        "driver-7",
        datetime(2026, 12, 7, 8, 0, 0, 123456, tzinfo=UTC),
        datetime(2026, 12, 7, 8, 31, 5, 1, tzinfo=UTC),
    )
    trip_id = encode_trip_id(span)
    assert "=" not in trip_id
    assert "/" not in trip_id
    assert decode_trip_id(trip_id) == span


@pytest.mark.parametrize("bad", ["", "not-base64!", "dDEKZAo", encode_trip_id.__name__])
def test_a_made_up_trip_id_is_invalid(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="from ListDriverTrips"):
        decode_trip_id(bad)


def test_a_trip_that_ends_before_it_starts_is_invalid() -> None:
    later = datetime(2026, 12, 7, 9, tzinfo=UTC)
    earlier = datetime(2026, 12, 7, 8, tzinfo=UTC)
    with pytest.raises(InvalidArgument):
        decode_trip_id(encode_trip_id(TripSpan("d", later, earlier)))
