"""Per-caller limits: concurrent streams and watchers per token `sub`, and a unary token bucket."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

from services.auth.identity import Identity, Role
from services.auth.interceptor import current_identity
from services.domain.errors import Unauthenticated
from services.server.config import Settings
from services.server.handlers import Handler, rewrap, stream_responses

API_PREFIX = "/ridemesh.v1."
STREAMS = "streams"
WATCHERS = "watchers"
# Which long-lived calls count against which allowance; every other API call is unary.
STREAM_KINDS: Mapping[str, str] = {
    "/ridemesh.v1.LocationService/StreamLocations": STREAMS,
    "/ridemesh.v1.RideService/Chat": STREAMS,
    "/ridemesh.v1.LocationService/WatchDriver": WATCHERS,
    "/ridemesh.v1.LocationService/WatchArea": WATCHERS,
    "/ridemesh.v1.RideService/WatchRide": WATCHERS,
    "/ridemesh.v1.GeoQueryService/WatchGeofenceEvents": WATCHERS,
    # Up to a day of history at real time: as long-lived as a watch.
    "/ridemesh.v1.GeoQueryService/ReplayFleet": WATCHERS,
}
STAFF_ROLES = frozenset({Role.OPS, Role.SERVICE})
# Buckets idle long enough to be full again are forgotten past this many callers.
_PRUNE_AT = 10_000


@dataclass(frozen=True, slots=True)
class Limits:
    """The allowances, per caller (`sub`) and per process; staff get `staff_factor` times more."""

    max_streams: int = 8
    max_watchers: int = 32
    staff_factor: int = 50
    unary_rate_per_s: float = 50.0
    unary_burst: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_streams=settings.max_streams_per_caller,
            max_watchers=settings.max_watchers_per_caller,
            staff_factor=settings.staff_limit_factor,
            unary_rate_per_s=settings.unary_rate_per_s,
            unary_burst=settings.unary_burst,
        )

    def factor(self, role: Role) -> int:
        """How many times the base allowances and unary rate a caller in `role` gets."""
        return self.staff_factor if role in STAFF_ROLES else 1

    def allowance(self, kind: str, role: Role) -> int:
        """How many calls of `kind` one caller in `role` may hold open at once."""
        base = self.max_streams if kind == STREAMS else self.max_watchers
        return base * self.factor(role)


@dataclass
class OpenCalls:
    """Counts open long-lived calls per (caller, kind); every acquire is paired with a release."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def acquire(self, sub: str, kind: str, limit: int) -> bool:
        key = (sub, kind)
        held = self.counts.get(key, 0)
        if held >= limit:
            return False
        self.counts[key] = held + 1
        return True

    def release(self, sub: str, kind: str) -> None:
        key = (sub, kind)
        held = self.counts.get(key, 0) - 1
        if held > 0:
            self.counts[key] = held
        else:
            self.counts.pop(key, None)  # no entry left behind for callers that went away

    def held(self, sub: str, kind: str) -> int:
        return self.counts.get((sub, kind), 0)


@dataclass
class CallerBuckets:
    """A token bucket per caller: `rate` calls a second, bursts up to `burst`."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    # sub -> (tokens, last refill time)
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, sub: str, factor: int = 1) -> bool:
        """Takes one token from `sub`'s bucket (rate and burst scaled by `factor`) if it has one."""
        now = self.clock()
        burst = float(self.burst * factor)
        tokens, last = self.buckets.get(sub, (burst, now))
        tokens = min(burst, tokens + (now - last) * self.rate * factor)
        allowed = tokens >= 1.0
        self.buckets[sub] = (tokens - 1.0 if allowed else tokens, now)
        if len(self.buckets) > _PRUNE_AT:
            self._prune(now)
        return allowed

    def _prune(self, now: float) -> None:
        # A bucket idle long enough to refill (at any factor: rate and burst scale together) is
        # the same as no bucket at all.
        idle_s = self.burst / self.rate
        for sub in [sub for sub, (_, last) in self.buckets.items() if now - last >= idle_s]:
            del self.buckets[sub]


class LimitInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses, with RESOURCE_EXHAUSTED, a caller's stream beyond its allowance and unary calls
    beyond its rate. Installed after AuthInterceptor: the caller is the verified token's `sub`."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.open_calls = OpenCalls()
        self.buckets = CallerBuckets(limits.unary_rate_per_s, limits.unary_burst, clock)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(API_PREFIX):
            return handler  # health and reflection are not limited per caller
        kind = STREAM_KINDS.get(method)
        if kind is not None:
            return rewrap(handler, self._guard_stream(kind))
        if handler.unary_stream or handler.stream_stream:
            return handler  # a stream not in STREAM_KINDS: nothing to count it against
        return rewrap(handler, self._guard_unary())

    def _guard_unary(self) -> Callable[[Handler], Handler]:
        def guard(method: Handler) -> Handler:
            async def wrapper(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                identity = _caller()
                if identity is None:
                    return await method(request, context)
                factor = self.limits.factor(identity.role)
                if not self.buckets.allow(identity.sub, factor):
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"rate limit: more than {self.limits.unary_rate_per_s * factor:g} calls/s "
                        f"(burst {self.limits.unary_burst * factor}) for caller {identity.sub!r}",
                    )
                return await method(request, context)

            return wrapper

        return guard

    def _guard_stream(self, kind: str) -> Callable[[Handler], Handler]:
        def guard(method: Handler) -> Handler:
            async def wrapper(
                request: Any, context: aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                identity = _caller()
                if identity is None:
                    async for response in stream_responses(method, request, context):
                        yield response
                    return
                limit = self.limits.allowance(kind, identity.role)
                if not self.open_calls.acquire(identity.sub, kind, limit):
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"limit of {limit} concurrent {kind} per caller reached "
                        f"(max_{kind}_per_caller) for {identity.sub!r}: close one first",
                    )
                try:
                    async for response in stream_responses(method, request, context):
                        yield response
                finally:
                    # Runs however the call ends: completion, error, cancel or disconnect.
                    self.open_calls.release(identity.sub, kind)

            return wrapper

        return guard


def _caller() -> Identity | None:
    try:
        return current_identity()
    except Unauthenticated:
        return None
