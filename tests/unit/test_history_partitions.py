"""Pure partition arithmetic of the history store: names, UTC bounds, days a batch touches."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from services.history.store import FixRow, days_spanned, partition_bounds, partition_name


def _fix(recorded_at: datetime, seq: int = 1) -> FixRow:
    return FixRow("d1", 52.5, 13.4, 0.0, 0.0, 5.0, recorded_at, seq, recorded_at)


def test_partition_name_is_zero_padded_yyyymmdd() -> None:
    assert partition_name(date(2026, 11, 28)) == "driver_locations_p20261128"
    assert partition_name(date(2027, 1, 5)) == "driver_locations_p20270105"


def test_partition_bounds_are_utc_midnights() -> None:
    start, end = partition_bounds(date(2026, 11, 28))
    assert start == datetime(2026, 11, 28, tzinfo=UTC)
    assert end == datetime(2026, 11, 29, tzinfo=UTC)
    assert start.utcoffset() == timedelta(0)


def test_partition_bounds_cross_month_and_year() -> None:
    assert partition_bounds(date(2026, 12, 31))[1] == datetime(2027, 1, 1, tzinfo=UTC)
    assert partition_bounds(date(2028, 2, 28))[1] == datetime(2028, 2, 29, tzinfo=UTC)


def test_adjacent_partitions_meet_without_gap_or_overlap() -> None:
    day = date(2026, 11, 28)
    assert partition_bounds(day)[1] == partition_bounds(day + timedelta(days=1))[0]


def test_days_spanned_midnight_belongs_to_the_new_day() -> None:
    before = datetime(2026, 11, 28, 23, 59, 59, 999999, tzinfo=UTC)
    midnight = datetime(2026, 11, 29, tzinfo=UTC)
    assert days_spanned([_fix(before)]) == {date(2026, 11, 28)}
    assert days_spanned([_fix(midnight)]) == {date(2026, 11, 29)}
    assert days_spanned([_fix(before), _fix(midnight, 2)]) == {
        date(2026, 11, 28),
        date(2026, 11, 29),
    }


@pytest.mark.parametrize(
    ("local", "utc_day"),
    [
        # 01:30 in UTC+02:00 is still the previous day in UTC.
        (datetime(2026, 11, 29, 1, 30, tzinfo=timezone(timedelta(hours=2))), date(2026, 11, 28)),
        # 20:00 in UTC-05:00 is already the next day in UTC.
        (datetime(2026, 11, 28, 20, 0, tzinfo=timezone(timedelta(hours=-5))), date(2026, 11, 29)),
    ],
)
def test_days_spanned_converts_other_offsets_to_utc(local: datetime, utc_day: date) -> None:
    assert days_spanned([_fix(local)]) == {utc_day}


def test_days_spanned_empty_and_naive() -> None:
    assert days_spanned([]) == set()
    with pytest.raises(ValueError, match="naive"):
        days_spanned([_fix(datetime(2026, 11, 28, 12, 0))])
