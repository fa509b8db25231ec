"""Steering driver apps: the sampling hint of the driver's activity on its stream, idle detection
from its fixes, and "fix now" requests let through at most once per few seconds.

The activity lives in Redis (services/live/activity.py) so a stream that reconnects to another
replica starts from it. Every change, whoever makes it (RideService as rides move, or the idle
detector here), is written there and published on the driver's control channel as the activity
alone; the stream holding the driver turns it into a full hint from this process's policy.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from google.protobuf.duration_pb2 import Duration
from redis.asyncio import Redis

from ridemesh.v1.location_service_pb2 import (
    DriverActivity,
    LocationUpdate,
    SamplingHint,
    StreamLocationsResponse,
)
from services.domain.sampling import (
    AVAILABLE,
    IDLE,
    NEAR_PICKUP,
    ON_RIDE,
    TO_PICKUP,
    Activity,
    FixRequestGate,
    IdleDetector,
    Sampling,
    SamplingPolicy,
    known,
)
from services.live.activity import (
    UNSPECIFIED,
    activity_message,
    get_activity,
    request_fix,
    set_activity,
)
from services.observability.metrics import FIX_REQUESTS, SAMPLING_HINTS
from services.server.config import InvalidSetting, Settings
from services.server.failures import raise_if_cancelling, unavailable

if TYPE_CHECKING:
    from services.location.streams import DriverStream

log = logging.getLogger(__name__)

# After the idle detector's change could not be written (Redis away, or a ride's activity won),
# it tries again no sooner than this.
RETRY_S = 5.0


def sampling_policy(settings: Settings) -> SamplingPolicy:
    """The policy the settings describe (RIDEMESH_SAMPLING_*, RIDEMESH_IDLE_*)."""
    s = settings
    try:
        return _policy(s)
    except ValueError as exc:
        raise InvalidSetting(f"{exc} (settings RIDEMESH_SAMPLING_*, RIDEMESH_IDLE_*)") from None


def _policy(s: Settings) -> SamplingPolicy:
    return SamplingPolicy(
        table={
            IDLE: Sampling(s.sampling_idle_s, s.sampling_idle_m),
            AVAILABLE: Sampling(s.sampling_available_s, s.sampling_available_m),
            TO_PICKUP: Sampling(s.sampling_to_pickup_s, s.sampling_to_pickup_m),
            NEAR_PICKUP: Sampling(s.sampling_near_pickup_s, s.sampling_near_pickup_m),
            ON_RIDE: Sampling(s.sampling_on_ride_s, s.sampling_on_ride_m),
        },
        idle_radius_m=s.idle_radius_m,
        idle_after_s=s.idle_after_s,
        fix_request_gap_s=s.fix_request_gap_s,
    )


def hint_message(policy: SamplingPolicy, activity: Activity) -> StreamLocationsResponse:
    sampling = policy.sampling(activity)
    interval = Duration()
    interval.FromNanoseconds(int(sampling.interval_s * 1e9))
    hint = SamplingHint(activity=activity, interval=interval, accuracy_m=sampling.accuracy_m)
    return StreamLocationsResponse(sampling_hint=hint)


class StreamSteer:
    """One driver stream's steering: the activity last hinted, its idle detector and its fix
    request gate. `control` runs in the hub's reader, so it only decides."""

    __slots__ = ("_policy", "activity", "_idle", "_gate", "_retry_at")

    def __init__(self, policy: SamplingPolicy) -> None:
        self._policy = policy
        # The activity the app was last told (UNSPECIFIED: no hint sent yet).
        self.activity: Activity = UNSPECIFIED
        self._idle = IdleDetector(policy.idle_radius_m, policy.idle_after_s)
        self._gate = FixRequestGate(policy.fix_request_gap_s)
        self._retry_at = 0.0

    def control(self, message: StreamLocationsResponse) -> StreamLocationsResponse | None:
        """What to send the app for a control message: an activity becomes its full hint (none
        when the app already has it), a fix request goes through unless one just did."""
        kind = message.WhichOneof("kind")
        if kind == "sampling_hint":
            activity = known(message.sampling_hint.activity)
            if activity == self.activity:
                return None
            self.activity = activity
            self._retry_at = 0.0  # the change is through: the detector may ask again at once
            SAMPLING_HINTS.labels(_name(activity)).inc()
            return hint_message(self._policy, activity)
        if kind == "fix_request":
            allowed = self._gate.allow(time.monotonic())
            FIX_REQUESTS.labels("sent" if allowed else "merged").inc()
            return message if allowed else None
        return message

    def wanted(
        self, lat: float, lng: float, now_s: float, accuracy_m: float = 0.0
    ) -> Activity | None:
        """After an accepted fix: IDLE or AVAILABLE when the idle detector disagrees with the
        activity of a driver without a ride (None otherwise, or while waiting to retry)."""
        idle = self._idle.observe(lat, lng, now_s, accuracy_m)
        if self.activity not in (IDLE, AVAILABLE) or now_s < self._retry_at:
            return None
        want = IDLE if idle else AVAILABLE
        if want == self.activity:
            return None
        self._retry_at = now_s + RETRY_S
        return want


class Steering:
    """This process's steering of its driver streams (see the module)."""

    def __init__(self, redis: Redis, policy: SamplingPolicy, live_window_s: float) -> None:
        self._redis = redis
        self._policy = policy
        self._live_window_s = live_window_s

    def attach(self, stream: DriverStream) -> None:
        """Before the stream subscribes to its control channel, so every hint is translated."""
        stream.steer = StreamSteer(self._policy)

    async def bound(self, stream: DriverStream, driver_id: str) -> None:
        """After the stream's first fix bound it: the hint of the driver's stored activity (read
        after subscribing, so a change in between is seen either way). With Redis away the app
        is told the default and follows later changes."""
        try:
            activity = await get_activity(self._redis, driver_id)
        except Exception as exc:
            _unless_dependency(exc, "read the activity of", driver_id)
            activity = UNSPECIFIED
        stream.control(activity_message(known(activity)))

    async def fixed(self, stream: DriverStream, update: LocationUpdate) -> None:
        """After an accepted fix: moves a driver without a ride between AVAILABLE and IDLE when
        it stood still long enough or moved off (cheap unless that happens)."""
        steer, driver_id = stream.steer, stream.session.driver_id
        if steer is None or driver_id is None:
            return
        position = update.position
        now = time.monotonic()
        want = steer.wanted(position.latitude, position.longitude, now, update.accuracy_m)
        if want is None:
            return
        allowed = (AVAILABLE, UNSPECIFIED) if want == IDLE else (IDLE,)
        try:
            changed = await set_activity(
                self._redis,
                driver_id,
                want,
                only_from=allowed,
                live_window_s=self._live_window_s,
            )
        except Exception as exc:
            _unless_dependency(exc, "store the activity of", driver_id)
            return
        if changed == 0:  # stored already (a message this stream missed): tell the app here
            stream.control(activity_message(want))

    async def watching(self, driver_id: str, reason: str) -> None:
        """Someone started watching the driver: asks its app for a fix now. A watch goes on
        without it when Redis is away (it would end for that anyway)."""
        try:
            await request_fix(self._redis, driver_id, reason)
        except Exception as exc:
            _unless_dependency(exc, "ask for a fix of", driver_id)


def _unless_dependency(exc: Exception, what: str, driver_id: str) -> None:
    """Logs a dependency failure (steering is best effort); anything else is raised."""
    raise_if_cancelling(exc)
    failure = unavailable(exc)
    if failure is None:
        raise exc
    log.warning(
        "could not %s driver %s: %s", what, driver_id, failure, extra={"driver_id": driver_id}
    )


def _name(activity: Activity) -> str:
    return DriverActivity.Name(activity).removeprefix("DRIVER_ACTIVITY_").lower()
