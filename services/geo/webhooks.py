"""Webhook subscriptions, pure: validation, which events one wants, the JSON each event is POSTed
as, its signature and the retry backoff.

Every event is POSTed alone, as a JSON object, with these headers:

    Content-Type: application/json
    Idempotency-Key: <the event's id>      the same on every attempt and on a replay
    Ridemesh-Event: <the event's kind>     e.g. geofence.enter
    Ridemesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of f"{t}.{body}">

Delivery is at least once: a receiver may see an event again (after a timeout, a restart or a
replay) and should drop an `Idempotency-Key` it has already processed. Events of one driver
arrive in the order they happened.

To verify a delivery, a receiver takes the raw request body (bytes, before any JSON parsing),
splits the signature header on "," into `t=` and `v1=`, computes
`hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()` with the secret
CreateWebhook returned, compares it with `v1` using `hmac.compare_digest`, and refuses a `t`
more than a few minutes from its own clock (so a recorded request cannot be replayed later).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.errors import InvalidArgument
from services.domain.validation import validate_id
from services.geo.zones import validate_labels
from services.live.events import LoggedEvent

EVENT_KINDS = (
    "geofence.enter",
    "geofence.exit",
    "geofence.dwell",
    "ride.approaching_pickup",
    "ride.at_pickup",
    "ride.left_pickup",
    "ride.approaching_dropoff",
)
ZONE_PREFIX = "geofence."
MAX_URL = 2048
MAX_GEOFENCE_IDS = 100
DEFAULT_MAX_RETRY_S = 3600.0
MIN_MAX_RETRY_S = 1.0
MAX_MAX_RETRY_S = 7 * 86_400.0
DEFAULT_DEAD_LETTER_PAGE = 100
MAX_DEAD_LETTER_PAGE = 1000
# Backoff between attempts at one event: full jitter under a ceiling that starts here and doubles
# up to the cap.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0


@dataclass(frozen=True, slots=True)
class WebhookSpec:
    """What a subscription asks for, validated."""

    url: str
    event_kinds: tuple[str, ...] = ()
    geofence_ids: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    max_retry_s: float = DEFAULT_MAX_RETRY_S

    def wants(self, event: LoggedEvent) -> bool:
        """Kinds filter every event; zones and labels only zone events."""
        if self.event_kinds and event.kind not in self.event_kinds:
            return False
        if not event.kind.startswith(ZONE_PREFIX):
            return True
        zone = event.subject
        if self.geofence_ids and zone.get("id") not in self.geofence_ids:
            return False
        labels = zone.get("l") or {}
        return all(labels.get(key) == value for key, value in self.labels.items())


@dataclass(frozen=True, slots=True)
class Counters:
    """How a subscription's deliveries went, as stored."""

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    last_error: str = ""
    last_delivery_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredWebhook:
    """A subscription as stored."""

    webhook_id: str
    spec: WebhookSpec
    secret: str
    create_time: datetime
    counters: Counters = field(default_factory=Counters)


@dataclass(frozen=True, slots=True)
class Backlog:
    """Events a subscription still owes (counted up to a limit) and the oldest one's age."""

    events: int = 0
    lag_s: float = 0.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a subscription gave up on, as it was POSTed."""

    event_id: str
    partition: int
    kind: str
    payload_json: str
    attempts: int
    last_error: str
    dead_time: datetime


def parse_webhook(message: pb.Webhook | None) -> WebhookSpec:
    """The subscription a CreateWebhook request asks for; InvalidArgument naming the field."""
    if message is None:
        raise InvalidArgument("webhook is required")
    return WebhookSpec(
        url=validate_url(message.url),
        event_kinds=validate_kinds(message.event_kinds),
        geofence_ids=validate_geofence_ids(message.geofence_ids),
        labels=validate_labels(message.labels),
        max_retry_s=validate_max_retry(
            message.max_retry.ToNanoseconds() / 1e9 if message.HasField("max_retry") else None
        ),
    )


def validate_url(url: str) -> str:
    if not url:
        raise InvalidArgument("webhook.url is required: an http:// or https:// URL")
    if len(url) > MAX_URL:
        raise InvalidArgument(f"webhook.url has {len(url)} characters; at most {MAX_URL}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise InvalidArgument(f"webhook.url is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidArgument(
            f"webhook.url must start with http:// or https://, got scheme {parts.scheme!r}"
        )
    if not parts.hostname or any(c.isspace() for c in url):
        raise InvalidArgument("webhook.url needs a host and no spaces, like https://example.com/x")
    return url


def validate_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    for kind in kinds:
        if kind not in EVENT_KINDS:
            raise InvalidArgument(
                f"webhook.event_kinds has {kind[:60]!r}, which is not an event kind; use any of "
                f"{', '.join(EVENT_KINDS)} (or none for every kind)"
            )
    return tuple(dict.fromkeys(kinds))


def validate_geofence_ids(ids: Sequence[str]) -> tuple[str, ...]:
    if len(ids) > MAX_GEOFENCE_IDS:
        raise InvalidArgument(
            f"webhook.geofence_ids has {len(ids)} ids; at most {MAX_GEOFENCE_IDS} are allowed"
        )
    return tuple(dict.fromkeys(validate_id(i, "webhook.geofence_ids entry") for i in ids))


def validate_max_retry(seconds: float | None) -> float:
    if seconds is None:
        return DEFAULT_MAX_RETRY_S
    if not MIN_MAX_RETRY_S <= seconds <= MAX_MAX_RETRY_S:
        raise InvalidArgument(
            f"webhook.max_retry must be between 1 second and 7 days, got {seconds:g} s "
            "(leave it unset for 1 hour)"
        )
    return seconds


def validate_event_ids(event_ids: Sequence[str]) -> list[str]:
    """The event ids a replay names (none: every dead letter)."""
    if len(event_ids) > MAX_DEAD_LETTER_PAGE:
        raise InvalidArgument(
            f"event_ids has {len(event_ids)} ids; replay at most {MAX_DEAD_LETTER_PAGE} at once, "
            "or none for every dead letter"
        )
    return [validate_id(i, "event_ids entry") for i in event_ids]


def dead_letter_page_size(requested: int) -> int:
    """ListWebhookDeadLetters' page size: 0 for the default, above the maximum coerced down."""
    if requested < 0:
        raise InvalidArgument(
            f"page_size must be 0 (for {DEFAULT_DEAD_LETTER_PAGE}) or positive, got {requested}"
        )
    return min(requested or DEFAULT_DEAD_LETTER_PAGE, MAX_DEAD_LETTER_PAGE)


def new_secret() -> str:
    """A signing key, shown to the caller once (CreateWebhook)."""
    return secrets.token_urlsafe(32)


def to_message(
    stored: StoredWebhook, backlog: Backlog | None = None, with_secret: bool = False
) -> pb.Webhook:
    """The API's view of a subscription; the secret only when just created."""
    spec, counters = stored.spec, stored.counters
    message = pb.Webhook(
        webhook_id=stored.webhook_id,
        url=spec.url,
        event_kinds=spec.event_kinds,
        geofence_ids=spec.geofence_ids,
        labels=spec.labels,
        secret=stored.secret if with_secret else "",
    )
    message.max_retry.FromNanoseconds(round(spec.max_retry_s * 1e9))
    message.create_time.FromDatetime(stored.create_time)
    if backlog is not None:
        health = message.health
        health.delivered = counters.delivered
        health.retried = counters.retried
        health.dead_lettered = counters.dead_lettered
        health.last_error = counters.last_error
        health.backlog = backlog.events
        health.lag.FromNanoseconds(round(backlog.lag_s * 1e9))
        if counters.last_delivery_time is not None:
            health.last_delivery_time.FromDatetime(counters.last_delivery_time)
    return message


def dead_letter_message(letter: DeadLetter) -> pb.WebhookDeadLetter:
    message = pb.WebhookDeadLetter(
        event_id=letter.event_id,
        payload_json=letter.payload_json,
        attempts=letter.attempts,
        last_error=letter.last_error,
    )
    message.dead_time.FromDatetime(letter.dead_time)
    return message


# --- What is POSTed ----------------------------------------------------------------------------


def payload(event: LoggedEvent) -> dict[str, Any]:
    """The JSON object an event is POSTed as."""
    fix, subject = event.fix, event.subject
    document: dict[str, Any] = {
        "id": event.event_id,
        "kind": event.kind,
        "time": rfc3339(int(fix.get("t", 0))),
        "driver_id": event.driver_id,
        "position": {"latitude": fix.get("lat"), "longitude": fix.get("lng")},
    }
    if event.kind.startswith(ZONE_PREFIX):
        document["geofence"] = {
            "id": subject.get("id", ""),
            "display_name": subject.get("n", ""),
            "labels": dict(subject.get("l") or {}),
        }
    else:
        # A ride event's subject is the ride and the distance in metres to the pickup (to the
        # drop-off for ride.approaching_dropoff) at that fix, as RideEvent shows them.
        document["ride"] = {"id": subject.get("id", ""), "distance_m": subject.get("m", 0.0)}
    document["reason"] = event.reason
    return document


def body(event: LoggedEvent) -> bytes:
    """The exact bytes POSTed (and signed) for an event."""
    return json.dumps(payload(event), separators=(",", ":"), ensure_ascii=False).encode()


def rfc3339(ms: int) -> str:
    """A millisecond Unix time as RFC 3339 in UTC, e.g. 2026-12-07T08:00:00.123Z."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def signature(secret: str, body: bytes, unix_s: int) -> str:
    """The Ridemesh-Signature header value for `body` sent at `unix_s`."""
    digest = hmac.new(secret.encode(), f"{unix_s}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={unix_s},v1={digest}"


def headers(secret: str, event_id: str, kind: str, body: bytes, unix_s: int) -> dict[str, str]:
    """Every header of one attempt (the signature's time is the attempt's)."""
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": event_id,
        "Ridemesh-Event": kind,
        "Ridemesh-Signature": signature(secret, body, unix_s),
    }


# --- Retrying ----------------------------------------------------------------------------------


class Uniform(Protocol):
    """A random source: random.Random, or a fixed one in tests."""

    def uniform(self, a: float, b: float) -> float: ...


def backoff_s(
    attempt: int, rng: Uniform, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S
) -> float:
    """How long to wait after failed attempt number `attempt` (1 for the first): full jitter
    below a ceiling of base_s doubling per attempt, capped at cap_s (so many senders that failed
    together do not come back together)."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt, 1) - 1, 62))
    return rng.uniform(0.0, ceiling)
