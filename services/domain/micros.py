"""Times as integer microseconds since the Unix epoch (UTC): the resolution PostgreSQL stores,
and a cheap key for history pages, tokens and trip ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (moment - EPOCH) // _ONE


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime `micros` microseconds after the epoch."""
    return EPOCH + timedelta(microseconds=micros)
