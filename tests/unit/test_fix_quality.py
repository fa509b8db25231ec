"""Fix quality filters: each refuses, holds or stores-only what it should, with its reason."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import REGISTRY

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1.common_pb2 import LatLng
from ridemesh.v1.location_service_pb2 import FixFilter, LocationUpdate
from services.domain.errors import InvalidArgument
from services.domain.fix_quality import (
    Filtered,
    FixQuality,
    QualitySettings,
    Route,
    check_accuracy,
)
from services.domain.geodesy import haversine_m
from services.location.streams import rejection

NOW = 1_800_000_000.0
# One metre of latitude in degrees (and of longitude at the equator, near enough here).
M = 1 / 111_195


def _fix(
    seq: int,
    lat: float = 0.0,
    lng: float = 0.0,
    *,
    at: float = NOW,
    speed: float = 10.0,
    accuracy: float = 5.0,
) -> LocationUpdate:
    recorded = Timestamp()
    recorded.FromNanoseconds(int(at * 1e9))
    return LocationUpdate(
        driver_id="d1",
        position=LatLng(latitude=lat, longitude=lng),
        speed_mps=speed,
        accuracy_m=accuracy,
        recorded_at=recorded,
        seq=seq,
    )


def _take(quality: FixQuality, fix: LocationUpdate, now: float = NOW) -> Route:
    recorded_s = fix.recorded_at.seconds + fix.recorded_at.nanos / 1e9
    route = quality.judge(fix, recorded_s, now)
    quality.accepted(fix, recorded_s, route)
    return route


def _refused(quality: FixQuality, fix: LocationUpdate, now: float = NOW) -> Filtered:
    recorded_s = fix.recorded_at.seconds + fix.recorded_at.nanos / 1e9
    with pytest.raises(Filtered) as caught:
        quality.judge(fix, recorded_s, now)
    return caught.value


def test_a_fix_less_accurate_than_the_bound_is_refused_naming_the_bound() -> None:
    error = _refused(FixQuality(QualitySettings(max_accuracy_m=50)), _fix(1, accuracy=51))
    assert error.filter == FixFilter.FIX_FILTER_ACCURACY
    assert "50 m" in str(error)
    assert _take(FixQuality(QualitySettings(max_accuracy_m=50)), _fix(1, accuracy=50)) is Route.LIVE


def test_the_accuracy_check_alone_serves_uploads() -> None:
    with pytest.raises(Filtered):
        check_accuracy(_fix(1, accuracy=1_000), QualitySettings())
    check_accuracy(_fix(1, accuracy=1_000), QualitySettings(max_accuracy_m=0))  # off


def test_a_repeat_of_the_previous_position_and_time_under_a_new_seq_is_refused() -> None:
    quality = FixQuality(QualitySettings())
    _take(quality, _fix(1, 1.0, 2.0))
    error = _refused(quality, _fix(2, 1.0, 2.0))
    assert error.filter == FixFilter.FIX_FILTER_DUPLICATE
    # The same place a second later is not a duplicate.
    assert _take(quality, _fix(3, 1.0, 2.0, at=NOW + 1, speed=0.0)) is Route.HOLD


def test_duplicates_pass_when_the_filter_is_off() -> None:
    quality = FixQuality(QualitySettings(drop_duplicates=False, jitter_m=0))
    _take(quality, _fix(1, 1.0, 2.0))
    assert _take(quality, _fix(2, 1.0, 2.0)) is Route.LIVE


def test_a_jump_faster_than_plausible_is_refused_and_the_allowance_grows_with_time() -> None:
    quality = FixQuality(QualitySettings(max_speed_mps=70))
    _take(quality, _fix(1, at=NOW))
    # 1 km in 5 s is 200 m/s.
    error = _refused(quality, _fix(2, 1_000 * M, at=NOW + 5))
    assert error.filter == FixFilter.FIX_FILTER_SPEED_JUMP
    assert "70 m/s" in str(error)
    # 1 km in 20 s (50 m/s) is plausible: the refused fix did not become the reference.
    assert _take(quality, _fix(3, 1_000 * M, at=NOW + 20)) is Route.LIVE


def test_accuracy_radii_widen_the_allowance() -> None:
    quality = FixQuality(QualitySettings(max_speed_mps=10))
    _take(quality, _fix(1, at=NOW, accuracy=40))
    # 100 m in 1 s is 100 m/s, but two fixes each 40 m uncertain may be 10 + 80 m apart.
    assert _take(quality, _fix(2, 85 * M, at=NOW + 1, accuracy=40)) is Route.LIVE


def test_speed_is_measured_in_metres_near_the_pole_and_across_the_antimeridian() -> None:
    quality = FixQuality(QualitySettings(max_speed_mps=70))
    _take(quality, _fix(1, 89.9, 179.9, at=NOW))
    # Half a degree of longitude at 89.9° is under 100 m: plausible in 10 s.
    assert haversine_m(89.9, 179.9, 89.9, -179.6) < 200
    assert _take(quality, _fix(2, 89.9, -179.6, at=NOW + 10)) is Route.LIVE


def test_stationary_jitter_is_held_at_the_standing_position() -> None:
    quality = FixQuality(QualitySettings(jitter_m=8, jitter_speed_mps=0.5))
    assert _take(quality, _fix(1, 0.0, 0.0, speed=0.0)) is Route.LIVE
    assert _take(quality, _fix(2, 5 * M, at=NOW + 4, speed=0.2)) is Route.HOLD
    assert quality.anchor == (0.0, 0.0)
    # Within 8 m of the anchor, not of the previous fix: jitter does not creep.
    assert _take(quality, _fix(3, -5 * M, at=NOW + 8, speed=0.0)) is Route.HOLD
    assert _take(quality, _fix(4, 12 * M, at=NOW + 12, speed=0.0)) is Route.LIVE
    assert quality.anchor == (12 * M, 0.0)


def test_a_moving_driver_is_never_held() -> None:
    quality = FixQuality(QualitySettings(jitter_m=8, jitter_speed_mps=0.5))
    _take(quality, _fix(1, speed=3.0))
    assert _take(quality, _fix(2, 3 * M, at=NOW + 1, speed=3.0)) is Route.LIVE


def test_a_fix_taken_long_before_it_arrived_is_stored_only_and_changes_nothing() -> None:
    quality = FixQuality(QualitySettings(late_after_s=30))
    _take(quality, _fix(1, at=NOW - 10))
    before = (quality.previous, quality.anchor)
    # Far away and long ago: no speed check, no jitter, just stored.
    assert _take(quality, _fix(2, 1.0, 1.0, at=NOW - 3600), now=NOW) is Route.STORE
    assert (quality.previous, quality.anchor) == before


def test_a_fix_older_than_the_previous_one_is_stored_only() -> None:
    quality = FixQuality(QualitySettings(late_after_s=30))
    _take(quality, _fix(1, at=NOW))
    assert _take(quality, _fix(2, 10 * M, at=NOW - 2)) is Route.STORE


def test_every_filter_can_be_turned_off() -> None:
    off = QualitySettings(
        max_accuracy_m=0, max_speed_mps=0, jitter_m=0, late_after_s=0, drop_duplicates=False
    )
    quality = FixQuality(off)
    _take(quality, _fix(1, speed=0.0, accuracy=10_000))
    assert _take(quality, _fix(2, 1.0, at=NOW, speed=0.0, accuracy=10_000)) is Route.LIVE
    assert _take(quality, _fix(3, 1.0, at=NOW + 1), now=NOW + 7200) is Route.LIVE


def test_a_filtered_rejection_names_its_filter_and_counts_under_it() -> None:
    sample = ("ridemesh_fixes_filtered_total", {"filter": "speed_jump"})
    before = REGISTRY.get_sample_value(*sample) or 0.0
    refused = rejection(7, "d", Filtered("too fast", pb.FIX_FILTER_SPEED_JUMP))
    assert refused.filter == pb.FIX_FILTER_SPEED_JUMP
    assert REGISTRY.get_sample_value(*sample) == before + 1
    plain = rejection(8, "d", InvalidArgument("latitude out of range"))
    assert plain.filter == pb.FIX_FILTER_UNSPECIFIED
