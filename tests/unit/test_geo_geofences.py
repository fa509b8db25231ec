"""Geofence RPC helpers without servers: filters, page tokens, page sizes and points."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ridemesh.v1 import common_pb2
from services.domain.errors import InvalidArgument
from services.geo.geofence_store import Cursor
from services.geo.geofences import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    _page_size,
    decode_page_token,
    encode_page_token,
    parse_filter,
    validate_point,
)

CURSOR = Cursor(datetime(2026, 11, 29, 10, 30, 0, 123456, tzinfo=UTC), "7d0c4f0e-uuid")


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("", None),
        ("   ", None),
        ("kind=airport", ("kind", "airport")),
        (" kind = airport ", ("kind", "airport")),
        ("city.zone_1-b=a=b", ("city.zone_1-b", "a=b")),
        ("kind=", ("kind", "")),
    ],
)
def test_filter_accepts_key_equals_value(text: str, label: tuple[str, str] | None) -> None:
    assert parse_filter(text) == label


@pytest.mark.parametrize(
    "text", ["kind", "=airport", "kind airport", "Kind=x", "kind:airport", "a b=c"]
)
def test_filter_refuses_anything_else_stating_the_syntax(text: str) -> None:
    with pytest.raises(InvalidArgument, match="key=value"):
        parse_filter(text)


def test_filter_value_bound() -> None:
    assert parse_filter("k=" + "v" * 256) == ("k", "v" * 256)
    with pytest.raises(InvalidArgument, match="at most 256"):
        parse_filter("k=" + "v" * 257)


@pytest.mark.parametrize("label", [None, ("kind", "airport")])
def test_page_token_round_trip(label: tuple[str, str] | None) -> None:
    token = encode_page_token(CURSOR, label)
    assert not set(token) & set("=/+")  # URL-safe, unpadded
    assert decode_page_token(token, label) == CURSOR


@given(st.datetimes(timezones=st.just(UTC)), st.text(min_size=1, max_size=40))
def test_page_token_round_trips_any_cursor(moment: datetime, geofence_id: str) -> None:
    cursor = Cursor(moment, geofence_id)
    assert decode_page_token(encode_page_token(cursor, None), None) == cursor


@pytest.mark.parametrize(
    "token",
    [
        "not base64 at all!",
        "e30",  # {}
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"t": "yesterday", "id": "x", "f": null}').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_page_token_that_does_not_decode_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token is not valid"):
        decode_page_token(token, None)


def test_page_token_without_time_zone_is_refused() -> None:
    raw = json.dumps({"t": "2026-11-29T10:30:00", "id": "x", "f": None}).encode()
    with pytest.raises(InvalidArgument, match="page_token"):
        decode_page_token(base64.urlsafe_b64encode(raw).decode(), None)


@pytest.mark.parametrize(
    ("made_for", "used_with"),
    [(None, ("kind", "airport")), (("kind", "airport"), None), (("kind", "a"), ("kind", "b"))],
)
def test_page_token_for_another_filter_is_refused(
    made_for: tuple[str, str] | None, used_with: tuple[str, str] | None
) -> None:
    token = encode_page_token(CURSOR, made_for)
    with pytest.raises(InvalidArgument, match="different filter"):
        decode_page_token(token, used_with)


def test_page_size_default_bound_and_negative() -> None:
    assert _page_size(0) == DEFAULT_PAGE_SIZE == 50
    assert _page_size(1) == 1
    assert _page_size(500) == 500
    assert _page_size(501) == MAX_PAGE_SIZE == 500
    assert _page_size(2**31 - 1) == 500
    with pytest.raises(InvalidArgument, match="page_size"):
        _page_size(-1)


@pytest.mark.parametrize(
    ("lat", "lng"), [(0, 0), (90, 180), (-90, -180), (52.5, 13.4), (-33.9, 151.2)]
)
def test_points_in_range_are_accepted(lat: float, lng: float) -> None:
    assert validate_point(common_pb2.LatLng(latitude=lat, longitude=lng)) == (lat, lng)


@pytest.mark.parametrize(
    ("lat", "lng", "reason"),
    [
        (float("nan"), 0, "finite"),
        (0, float("inf"), "finite"),
        (90.001, 0, "point.latitude"),
        (-91, 0, "point.latitude"),
        (0, 180.5, "point.longitude"),
        (0, -181, "point.longitude"),
    ],
)
def test_points_out_of_range_are_refused(lat: float, lng: float, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        validate_point(common_pb2.LatLng(latitude=lat, longitude=lng))


def test_missing_point_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="point is required"):
        validate_point(None)
