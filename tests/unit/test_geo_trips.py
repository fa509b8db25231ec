"""ListDriverTrips' request checks that need no database: page sizes and page tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain import pagetoken
from services.domain.errors import InvalidArgument
from services.domain.trips import TripSettings
from services.geo import trips

START = datetime(2026, 3, 10, tzinfo=UTC)
END = datetime(2026, 3, 11, tzinfo=UTC)
START_US = 1_773_100_800_000_000  # START in µs since the epoch
KEY = f"trips\0d-1\0{START_US}\0{START_US + 86_400_000_000}"


@pytest.mark.parametrize(("asked", "used"), [(0, 100), (1, 1), (1_000, 1_000), (5_000, 1_000)])
def test_page_sizes_default_and_cap(asked: int, used: int) -> None:
    assert trips.page_size_of(asked) == used


def test_a_negative_page_size_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="page_size"):
        trips.page_size_of(-1)


def _page(token: str) -> pb.ListDriverTripsRequest:
    request = pb.ListDriverTripsRequest(driver_id="d-1", page_token=token)
    request.start_time.FromDatetime(START)
    request.end_time.FromDatetime(END)
    return request


@pytest.mark.parametrize(
    "position",
    [
        {"r": [START_US - 1, 1], "k": [START_US + 5, 2]},  # resumes before the range
        {"r": [START_US + 9, 1], "k": [START_US + 5, 2]},  # resumes after the last trip
        {"r": [START_US, 1], "k": [START_US + 86_400_000_000, 2]},  # last trip after the range
        {"r": [START_US, 1]},
        {"r": ["x", 1], "k": [START_US, 2]},
        {"r": [START_US, True], "k": [START_US, 2]},
    ],
)
async def test_a_token_with_impossible_keys_is_refused(position: dict[str, object]) -> None:
    token = pagetoken.encode(position, KEY)
    # Refused before any read: the store is never touched.
    nothing: Any = None
    with pytest.raises(InvalidArgument, match="page_token"):
        await trips.list_driver_trips(nothing, _page(token), TripSettings())
