"""The rules every GPS fix must meet: ids, coordinates, finite ranges, seq and timestamp skew."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ridemesh.v1.common_pb2 import LatLng
from ridemesh.v1.location_service_pb2 import LocationUpdate
from services.domain.errors import InvalidArgument
from services.domain.validation import FixLimits, validate_id, validate_update

NOW = 1_800_000_000.0
LIMITS = FixLimits(max_future_skew_s=300.0, max_age_s=7 * 86400.0)
NON_FINITE = [math.nan, math.inf, -math.inf]


def _fix(
    lat: float = 52.52,
    lng: float = 13.405,
    *,
    driver_id: str = "d-1",
    seq: int = 1,
    recorded_s: float = NOW,
    heading: float = 90.0,
    speed: float = 10.0,
    accuracy: float = 5.0,
) -> LocationUpdate:
    update = LocationUpdate(
        driver_id=driver_id,
        position=LatLng(latitude=lat, longitude=lng),
        heading_deg=heading,
        speed_mps=speed,
        accuracy_m=accuracy,
        seq=seq,
    )
    seconds = math.floor(recorded_s)
    update.recorded_at.seconds = seconds
    update.recorded_at.nanos = round((recorded_s - seconds) * 1e9)
    return update


def _rejected(update: LocationUpdate, now_s: float = NOW) -> str:
    with pytest.raises(InvalidArgument) as info:
        validate_update(update, now_s, LIMITS)
    return str(info.value)


def test_valid_fix_returns_its_recorded_time() -> None:
    assert validate_update(_fix(recorded_s=NOW - 12.5), NOW, LIMITS) == NOW - 12.5


@pytest.mark.parametrize(("lat", "lng"), [(90.0, 180.0), (-90.0, -180.0), (90.0, -180.0), (0, 0)])
def test_coordinate_bounds_are_inclusive(lat: float, lng: float) -> None:
    assert validate_update(_fix(lat, lng), NOW, LIMITS) == NOW


@pytest.mark.parametrize("lat", [90.000001, -90.000001, 91.0, -1000.0])
def test_latitude_out_of_range_names_field_and_bound(lat: float) -> None:
    message = _rejected(_fix(lat=lat))
    assert "latitude" in message
    assert "-90" in message
    assert "90" in message


@pytest.mark.parametrize("lng", [180.000001, -180.000001, 360.0, -540.0])
def test_longitude_out_of_range_names_field_and_bound(lng: float) -> None:
    message = _rejected(_fix(lng=lng))
    assert "longitude" in message
    assert "-180" in message


@pytest.mark.parametrize("bad", NON_FINITE)
@pytest.mark.parametrize("field", ["lat", "lng"])
def test_non_finite_coordinates_are_rejected(field: str, bad: float) -> None:
    update = _fix(lat=bad) if field == "lat" else _fix(lng=bad)
    message = _rejected(update)
    assert "position must be finite" in message


@pytest.mark.parametrize("bad", NON_FINITE)
@pytest.mark.parametrize("field", ["heading_deg", "speed_mps", "accuracy_m"])
def test_non_finite_motion_fields_are_rejected(field: str, bad: float) -> None:
    update = _fix()
    setattr(update, field, bad)
    message = _rejected(update)
    assert field in message
    assert "finite" in message


@pytest.mark.parametrize("heading", [0.0, 0.5, 180.0, 359.5, 360.0])
def test_heading_from_0_to_360_is_accepted(heading: float) -> None:
    validate_update(_fix(heading=heading), NOW, LIMITS)


@pytest.mark.parametrize("heading", [-0.5, -1.0, 360.5, 720.0])
def test_heading_outside_0_to_360_names_field_and_bounds(heading: float) -> None:
    message = _rejected(_fix(heading=heading))
    assert "heading_deg" in message
    assert "from 0 to 360" in message


@pytest.mark.parametrize(("field", "high"), [("speed_mps", "1000"), ("accuracy_m", "100000")])
def test_negative_speed_and_accuracy_are_rejected(field: str, high: str) -> None:
    update = _fix()
    setattr(update, field, -0.5)
    message = _rejected(update)
    assert field in message
    assert f"from 0 to {high}" in message


@pytest.mark.parametrize(("field", "high"), [("speed_mps", 1000.0), ("accuracy_m", 100_000.0)])
def test_speed_and_accuracy_upper_bounds(field: str, high: float) -> None:
    update = _fix()
    setattr(update, field, high)
    validate_update(update, NOW, LIMITS)
    setattr(update, field, high * 1.01)
    assert field in _rejected(update)


@pytest.mark.parametrize(("field", "value"), [("speed_mps", 0.0), ("accuracy_m", 0.0)])
def test_zero_speed_and_accuracy_are_accepted(field: str, value: float) -> None:
    update = _fix()
    setattr(update, field, value)
    validate_update(update, NOW, LIMITS)


def test_missing_position_is_rejected() -> None:
    update = _fix()
    update.ClearField("position")
    assert _rejected(update) == "position is required"


def test_missing_recorded_at_is_rejected() -> None:
    update = _fix()
    update.ClearField("recorded_at")
    assert _rejected(update) == "recorded_at is required"


@pytest.mark.parametrize("seq", [0, -1, -(2**63)])
def test_seq_must_be_positive(seq: int) -> None:
    message = _rejected(_fix(seq=seq))
    assert "seq must be a positive integer" in message
    assert str(seq) in message


def test_seq_one_is_accepted() -> None:
    validate_update(_fix(seq=1), NOW, LIMITS)


def test_recorded_at_exactly_at_the_skew_limit_is_accepted() -> None:
    assert validate_update(_fix(recorded_s=NOW + 300.0), NOW, LIMITS) == NOW + 300.0


def test_recorded_at_just_inside_the_skew_is_accepted() -> None:
    validate_update(_fix(recorded_s=NOW + 299.999), NOW, LIMITS)


def test_recorded_at_just_outside_the_skew_is_rejected_naming_the_limit() -> None:
    message = _rejected(_fix(recorded_s=NOW + 300.01))
    assert "recorded_at" in message
    assert "ahead of the server clock" in message
    assert "at most 300 s" in message


def test_future_skew_follows_the_limits_passed_in() -> None:
    tight = FixLimits(max_future_skew_s=5.0)
    validate_update(_fix(recorded_s=NOW + 4.9), NOW, tight)
    with pytest.raises(InvalidArgument, match="at most 5 s"):
        validate_update(_fix(recorded_s=NOW + 5.1), NOW, tight)


def test_recorded_at_just_younger_than_max_age_is_accepted() -> None:
    validate_update(_fix(recorded_s=NOW - 7 * 86400.0 + 1.0), NOW, LIMITS)


def test_recorded_at_older_than_max_age_is_rejected_naming_the_limit() -> None:
    message = _rejected(_fix(recorded_s=NOW - 7 * 86400.0 - 1.0))
    assert "recorded_at" in message
    assert "older than 7 days" in message


def test_recorded_at_nanos_count() -> None:
    # 300.5 s ahead: only the nanos push it past the limit.
    update = _fix(recorded_s=NOW + 300.0)
    update.recorded_at.nanos = 500_000_000
    assert "ahead of the server clock" in _rejected(update)


def test_default_limits() -> None:
    assert FixLimits().max_future_skew_s == 300.0
    assert FixLimits().max_age_s == 7 * 86400.0


def test_update_with_a_bad_driver_id_is_rejected() -> None:
    assert "driver_id" in _rejected(_fix(driver_id="no spaces"))


# --- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "A" * 128, "driver-42", "x.y_z~w:v@u-9", "0123456789"])
def test_valid_ids_are_returned_unchanged(value: str) -> None:
    assert validate_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "A" * 129,
        "drïver",
        "司机",
        "d\x00",
        "d\n",
        "\nd",
        "d\t1",
        "d 1",
        " d",
        "d/1",
        "d*",
        "rm:ch:*",
        "d\u00a0",
        "d\u200b",
        "ａ",  # fullwidth a: \w-style classes would take it
    ],
)
def test_invalid_ids_are_rejected_naming_the_alphabet(value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_id(value)
    message = str(info.value)
    assert message.startswith("driver_id ")
    assert "1 to 128 characters" in message
    assert "A-Z a-z 0-9 . _ ~ : @ -" in message


def test_invalid_id_message_names_the_given_field() -> None:
    with pytest.raises(InvalidArgument, match=r"^watcher_id '' is not valid"):
        validate_id("", what="watcher_id")


def test_long_invalid_id_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_id("B" * 500)
    assert "B" * 40 + "…" in str(info.value)
    assert "B" * 41 not in str(info.value)


# --- properties ------------------------------------------------------------------------------

VALID_LAT = st.floats(min_value=-90.0, max_value=90.0, allow_nan=False)
VALID_LNG = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)
OUTSIDE_LAT = st.floats(min_value=90.0, exclude_min=True, allow_nan=False) | st.floats(
    max_value=-90.0, exclude_max=True, allow_nan=False
)
OUTSIDE_LNG = st.floats(min_value=180.0, exclude_min=True, allow_nan=False) | st.floats(
    max_value=-180.0, exclude_max=True, allow_nan=False
)


@given(lat=VALID_LAT, lng=VALID_LNG)
def test_any_finite_in_range_position_is_accepted(lat: float, lng: float) -> None:
    assert validate_update(_fix(lat, lng), NOW, LIMITS) == NOW


@given(lat=OUTSIDE_LAT, lng=VALID_LNG)
def test_any_latitude_outside_range_is_rejected(lat: float, lng: float) -> None:
    with pytest.raises(InvalidArgument, match="latitude"):
        validate_update(_fix(lat, lng), NOW, LIMITS)


@given(lat=VALID_LAT, lng=OUTSIDE_LNG)
def test_any_longitude_outside_range_is_rejected(lat: float, lng: float) -> None:
    with pytest.raises(InvalidArgument, match="longitude"):
        validate_update(_fix(lat, lng), NOW, LIMITS)


@given(skew=st.floats(min_value=0.0, max_value=1e6, allow_nan=False))
def test_future_skew_property(skew: float) -> None:
    recorded = _fix(recorded_s=NOW + skew)
    stamped = recorded.recorded_at.seconds + recorded.recorded_at.nanos / 1e9
    if stamped <= NOW + LIMITS.max_future_skew_s:
        validate_update(recorded, NOW, LIMITS)
    else:
        with pytest.raises(InvalidArgument, match="ahead of the server clock"):
            validate_update(recorded, NOW, LIMITS)
