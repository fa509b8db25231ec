"""The sampling policy, the idle detector, fix-request spacing and a stream's steering."""

from __future__ import annotations

import math

import pytest

from ridemesh.v1.location_service_pb2 import FixRequest, RideOffer, StreamLocationsResponse
from services.domain.sampling import (
    AVAILABLE,
    DEFAULT_TABLE,
    IDLE,
    NEAR_PICKUP,
    ON_RIDE,
    TO_PICKUP,
    FixRequestGate,
    IdleDetector,
    Sampling,
    SamplingPolicy,
    known,
)
from services.live.activity import UNSPECIFIED, activity_message
from services.location.steering import StreamSteer, sampling_policy
from services.server.config import InvalidSetting, Settings

LAT, LNG = 52.52, 13.405


def test_the_default_table_samples_closest_near_the_pickup_and_least_when_idle() -> None:
    policy = SamplingPolicy()
    interval = {a: policy.sampling(a).interval_s for a in DEFAULT_TABLE}
    assert interval[NEAR_PICKUP] < interval[TO_PICKUP] < interval[ON_RIDE]
    assert interval[ON_RIDE] < interval[AVAILABLE] < interval[IDLE]
    assert policy.sampling(NEAR_PICKUP).accuracy_m < policy.sampling(IDLE).accuracy_m


def test_an_unknown_activity_is_sampled_as_available() -> None:
    policy = SamplingPolicy()
    assert policy.sampling(UNSPECIFIED) == policy.sampling(AVAILABLE)
    assert known(UNSPECIFIED) == AVAILABLE
    assert known(ON_RIDE) == ON_RIDE


def test_a_table_missing_an_activity_or_with_a_zero_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="DRIVER_ACTIVITY_IDLE"):
        SamplingPolicy(table={a: s for a, s in DEFAULT_TABLE.items() if a != IDLE})
    with pytest.raises(ValueError, match="above 0"):
        SamplingPolicy(table={**DEFAULT_TABLE, ON_RIDE: Sampling(0.0, 10.0)})


def test_settings_shape_the_policy_and_bad_ones_name_the_settings() -> None:
    env = {"RIDEMESH_SAMPLING_IDLE_S": "60", "RIDEMESH_IDLE_AFTER_S": "90"}
    settings = Settings.from_env(env, required=())
    policy = sampling_policy(settings)
    assert policy.sampling(IDLE) == Sampling(60.0, 50.0)
    assert policy.idle_after_s == 90.0
    with pytest.raises(InvalidSetting, match="RIDEMESH_SAMPLING_"):
        sampling_policy(settings.with_overrides(sampling_on_ride_s=0.0))


def _walk(metres: float) -> tuple[float, float]:
    """A point `metres` east of the start (close enough at these distances)."""
    return LAT, LNG + metres / (111_320.0 * math.cos(math.radians(LAT)))


def test_a_driver_within_the_radius_long_enough_is_idle_and_moving_off_ends_it() -> None:
    detector = IdleDetector(radius_m=30.0, after_s=120.0)
    assert not detector.observe(LAT, LNG, 0.0)
    assert not detector.observe(*_walk(20.0), 60.0)
    assert not detector.observe(*_walk(25.0), 119.0)
    assert detector.observe(*_walk(10.0), 120.0)
    assert detector.observe(*_walk(29.0), 400.0)
    assert not detector.observe(*_walk(45.0), 401.0)  # beyond the radius: moving again
    # Standing still again starts a new wait from the new anchor.
    assert not detector.observe(*_walk(50.0), 500.0)
    assert detector.observe(*_walk(50.0), 521.0)


def test_a_coarse_fix_within_its_own_accuracy_is_not_a_move() -> None:
    detector = IdleDetector(radius_m=30.0, after_s=120.0)
    detector.observe(LAT, LNG, 0.0, accuracy_m=5.0)
    assert not detector.observe(*_walk(60.0), 100.0, accuracy_m=50.0)
    assert detector.observe(*_walk(60.0), 120.0, accuracy_m=50.0)  # still the first anchor
    assert not detector.observe(*_walk(60.0), 130.0, accuracy_m=5.0)  # a sharp fix: it moved


def test_a_driver_creeping_along_never_counts_as_idle() -> None:
    detector = IdleDetector(radius_m=30.0, after_s=120.0)
    verdicts = [detector.observe(*_walk(40.0 * i), 10.0 * i) for i in range(60)]
    assert not any(verdicts)


def test_fix_requests_are_let_through_once_per_gap() -> None:
    gate = FixRequestGate(2.0)
    assert gate.allow(100.0)
    assert not gate.allow(100.0)
    assert not gate.allow(101.9)
    assert gate.allow(102.0)
    assert not gate.allow(103.0)


def test_a_stream_turns_an_activity_into_its_hint_once() -> None:
    steer = StreamSteer(SamplingPolicy())
    hint = steer.control(activity_message(TO_PICKUP))
    assert hint is not None
    assert hint.sampling_hint.activity == TO_PICKUP
    assert hint.sampling_hint.interval.ToMilliseconds() == 2000
    assert hint.sampling_hint.accuracy_m == 10.0
    assert steer.control(activity_message(TO_PICKUP)) is None  # the app has it already
    unknown = steer.control(activity_message(UNSPECIFIED))
    assert unknown is not None
    assert unknown.sampling_hint.activity == AVAILABLE


def test_a_stream_lets_one_fix_request_through_per_gap_and_other_messages_untouched() -> None:
    steer = StreamSteer(SamplingPolicy(fix_request_gap_s=60.0))
    request = StreamLocationsResponse(fix_request=FixRequest(reason="watched"))
    assert steer.control(request) == request
    assert steer.control(request) is None
    offer = StreamLocationsResponse(offer=RideOffer(ride_id="r1"))
    assert steer.control(offer) == offer


def test_idle_detection_asks_for_idle_then_available_for_a_driver_without_a_ride() -> None:
    steer = StreamSteer(SamplingPolicy(idle_radius_m=30.0, idle_after_s=120.0))
    steer.control(activity_message(AVAILABLE))
    assert steer.wanted(LAT, LNG, 0.0) is None
    assert steer.wanted(LAT, LNG, 130.0) == IDLE
    assert steer.wanted(LAT, LNG, 131.0) is None  # asked already: waits before asking again
    steer.control(activity_message(IDLE))
    assert steer.wanted(*_walk(100.0), 140.0) == AVAILABLE


def test_idle_detection_leaves_a_driver_on_a_ride_alone() -> None:
    steer = StreamSteer(SamplingPolicy(idle_radius_m=30.0, idle_after_s=120.0))
    steer.control(activity_message(ON_RIDE))
    assert steer.wanted(LAT, LNG, 0.0) is None
    assert steer.wanted(LAT, LNG, 1000.0) is None
