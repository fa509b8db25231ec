"""A per-driver token bucket: the server's own limit on how fast one driver's fixes are taken."""

from __future__ import annotations


class TokenBucket:
    """Allows `rate` events per second with bursts of up to `burst`; the caller passes time in."""

    __slots__ = ("_rate", "_burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        """Takes one token if there is one at time `now` (monotonic seconds)."""
        if self._last is not None:
            elapsed = max(0.0, now - self._last)
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        # A clock that steps back must not mint tokens when it steps forward again.
        self._last = now if self._last is None else max(self._last, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    @property
    def rate(self) -> float:
        return self._rate
