"""The per-driver token bucket: bursts, refill, the burst cap and a clock that steps back."""

from __future__ import annotations

import pytest

from services.location.throttle import TokenBucket


def _taken(bucket: TokenBucket, now: float, tries: int) -> int:
    return sum(bucket.allow(now) for _ in range(tries))


def test_a_full_bucket_allows_the_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=2.0, burst=5)
    assert [bucket.allow(100.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.allow(100.0)


def test_tokens_refill_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=5)
    assert _taken(bucket, 100.0, 5) == 5
    assert not bucket.allow(100.25)  # half a token
    assert bucket.allow(100.5)  # 0.5 + 0.5 = 1.0
    assert not bucket.allow(100.5)
    assert _taken(bucket, 102.0, 10) == 3  # 1.5 s × 2/s


def test_refill_never_exceeds_the_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=5)
    assert _taken(bucket, 0.0, 5) == 5
    assert _taken(bucket, 10_000.0, 100) == 5


def test_an_unused_bucket_does_not_bank_tokens_beyond_the_burst() -> None:
    bucket = TokenBucket(rate=100.0, burst=3)
    bucket.allow(0.0)
    assert _taken(bucket, 3600.0, 10) == 3


def test_fractional_tokens_accumulate_across_calls() -> None:
    bucket = TokenBucket(rate=1.0, burst=1)
    assert bucket.allow(0.0)
    assert not bucket.allow(0.25)
    assert not bucket.allow(0.5)
    assert not bucket.allow(0.75)
    assert bucket.allow(1.0)


def test_time_going_backwards_mints_no_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=5)
    assert _taken(bucket, 100.0, 5) == 5
    assert not bucket.allow(40.0)
    assert not bucket.allow(40.0)


def test_a_clock_that_steps_back_and_forth_mints_no_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=5)
    assert _taken(bucket, 100.0, 5) == 5
    assert not bucket.allow(40.0)
    # Back at 99 s and 100 s: no time has passed since the bucket was drained at 100 s.
    assert not bucket.allow(99.0)
    assert not bucket.allow(100.0)


def test_rate_is_exposed() -> None:
    assert TokenBucket(rate=2.5, burst=1).rate == 2.5


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 5), (-1.0, 5), (1.0, 0), (1.0, -3)])
def test_constructor_rejects_non_positive_rate_or_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="rate must be positive and burst at least 1"):
        TokenBucket(rate, burst)


def test_smallest_valid_bucket_works() -> None:
    bucket = TokenBucket(rate=0.5, burst=1)
    assert bucket.allow(0.0)
    assert not bucket.allow(1.5)
    assert bucket.allow(2.0)
