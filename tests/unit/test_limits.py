"""Per-caller limits: stream counting, staff allowances, unary token buckets, settings."""

from __future__ import annotations

from services.auth.identity import Role
from services.auth.limits import (
    STREAM_KINDS,
    STREAMS,
    WATCHERS,
    CallerBuckets,
    Limits,
    OpenCalls,
)
from services.server.config import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_open_calls_refuse_beyond_the_limit_and_accept_after_a_release() -> None:
    calls = OpenCalls()
    assert all(calls.acquire("rider-1", WATCHERS, 3) for _ in range(3))
    assert not calls.acquire("rider-1", WATCHERS, 3)
    calls.release("rider-1", WATCHERS)
    assert calls.acquire("rider-1", WATCHERS, 3)


def test_open_calls_are_counted_per_caller_and_per_kind() -> None:
    calls = OpenCalls()
    assert calls.acquire("a", WATCHERS, 1)
    assert not calls.acquire("a", WATCHERS, 1)
    assert calls.acquire("a", STREAMS, 1)
    assert calls.acquire("b", WATCHERS, 1)
    assert calls.held("a", WATCHERS) == 1


def test_released_callers_leave_no_entry_behind() -> None:
    calls = OpenCalls()
    calls.acquire("a", STREAMS, 5)
    calls.acquire("a", STREAMS, 5)
    calls.release("a", STREAMS)
    calls.release("a", STREAMS)
    assert calls.counts == {}
    calls.release("a", STREAMS)  # an extra release never goes negative
    assert calls.held("a", STREAMS) == 0


def test_staff_get_a_larger_allowance() -> None:
    limits = Limits(max_streams=8, max_watchers=32, staff_factor=50)
    assert limits.allowance(STREAMS, Role.DRIVER) == 8
    assert limits.allowance(WATCHERS, Role.RIDER) == 32
    assert limits.allowance(WATCHERS, Role.OPS) == 1600
    assert limits.allowance(STREAMS, Role.SERVICE) == 400


def test_every_streaming_rpc_counts_against_an_allowance() -> None:
    assert {k.rsplit("/", 1)[1] for k, v in STREAM_KINDS.items() if v == STREAMS} == {
        "StreamLocations",
        "Chat",
    }
    assert {k.rsplit("/", 1)[1] for k, v in STREAM_KINDS.items() if v == WATCHERS} == {
        "WatchDriver",
        "WatchArea",
        "WatchRide",
        "WatchGeofenceEvents",
        "ReplayFleet",
    }


def test_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    buckets = CallerBuckets(rate=10.0, burst=5, clock=clock)
    assert [buckets.allow("a") for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.15  # one token back (and a half)
    assert buckets.allow("a")
    assert not buckets.allow("a")


def test_one_callers_flood_does_not_touch_anothers_bucket() -> None:
    buckets = CallerBuckets(rate=1.0, burst=2, clock=FakeClock())
    for _ in range(100):
        buckets.allow("flooder")
    assert buckets.allow("quiet")
    assert buckets.allow("quiet")


def test_bucket_never_holds_more_than_the_burst() -> None:
    clock = FakeClock()
    buckets = CallerBuckets(rate=100.0, burst=3, clock=clock)
    buckets.allow("a")
    clock.now += 3600
    assert [buckets.allow("a") for _ in range(4)] == [True, True, True, False]


def test_full_buckets_are_pruned() -> None:
    clock = FakeClock()
    buckets = CallerBuckets(rate=1000.0, burst=1, clock=clock)
    for n in range(10_001):
        buckets.allow(f"caller-{n}")
    clock.now += 1.0
    buckets.allow("one-more")
    assert len(buckets.buckets) <= 2


def test_limits_come_from_settings() -> None:
    settings = Settings(redis_url="r", database_url="d").with_overrides(
        max_watchers_per_caller=2, unary_rate_per_s=7.5
    )
    limits = Limits.from_settings(settings)
    assert limits.max_watchers == 2
    assert limits.unary_rate_per_s == 7.5
    assert limits.max_streams == 8
    assert limits.staff_factor == 50


def test_staff_buckets_scale_rate_and_burst() -> None:
    clock = FakeClock()
    buckets = CallerBuckets(rate=1.0, burst=2, clock=clock)
    assert sum(buckets.allow("ops", factor=50) for _ in range(200)) == 100
    clock.now += 1.0
    assert sum(buckets.allow("ops", factor=50) for _ in range(200)) == 50
