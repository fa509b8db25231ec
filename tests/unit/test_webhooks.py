"""Webhook subscriptions, pure: validation, filters, the payload, its signature and the backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from datetime import UTC, datetime

import pytest
from google.protobuf.duration_pb2 import Duration

from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.errors import InvalidArgument
from services.geo.webhooks import (
    DEFAULT_MAX_RETRY_S,
    EVENT_KINDS,
    Backlog,
    Counters,
    StoredWebhook,
    WebhookSpec,
    backoff_s,
    body,
    dead_letter_page_size,
    headers,
    new_secret,
    parse_webhook,
    payload,
    rfc3339,
    signature,
    to_message,
    validate_event_ids,
)
from services.live.events import LoggedEvent

T_MS = 1_764_331_200_123  # 2025-11-28T12:00:00.123Z
ZONE = {"id": "z-1", "n": "Airport", "l": {"kind": "airport", "city": "ber"}}
FIX = {"d": "d-7", "t": T_MS, "lat": 52.5, "lng": 13.4}


def zone_event(kind: str = "geofence.enter", zone: dict[str, object] | None = None) -> LoggedEvent:
    return LoggedEvent(0, (T_MS + 5, 2), "ep", kind, FIX, zone or ZONE, "")


def ride_event(kind: str = "ride.at_pickup") -> LoggedEvent:
    return LoggedEvent(0, (T_MS + 5, 3), "ep", kind, FIX, {"id": "ride-1", "m": 12.5}, "")


def webhook(**fields: object) -> pb.Webhook:
    message = pb.Webhook(url="https://hooks.example.com/ridemesh")
    for name, value in fields.items():
        if name == "max_retry":
            message.max_retry.CopyFrom(value)  # type: ignore[arg-type]
        elif name == "labels":
            message.labels.update(value)  # type: ignore[call-overload]
        elif isinstance(value, list):
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


def refused(message: pb.Webhook | None, *fragments: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_webhook(message)
    for fragment in fragments:
        assert fragment in str(caught.value)


# --- validation --------------------------------------------------------------------------------


def test_a_minimal_webhook_gets_the_defaults() -> None:
    spec = parse_webhook(webhook())
    assert spec == WebhookSpec("https://hooks.example.com/ridemesh", (), (), {}, 3600.0)
    assert DEFAULT_MAX_RETRY_S == 3600.0


def test_every_field_is_kept() -> None:
    spec = parse_webhook(
        webhook(
            url="http://127.0.0.1:8099/in?x=1",
            event_kinds=["geofence.exit", "ride.at_pickup", "geofence.exit"],
            geofence_ids=["z-1", "z-2"],
            labels={"kind": "airport"},
            max_retry=Duration(seconds=1),
        )
    )
    assert spec.url == "http://127.0.0.1:8099/in?x=1"
    assert spec.event_kinds == ("geofence.exit", "ride.at_pickup")  # duplicates dropped
    assert spec.geofence_ids == ("z-1", "z-2")
    assert spec.labels == {"kind": "airport"}
    assert spec.max_retry_s == 1.0


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "webhook.url is required"),
        ("ftp://example.com/x", "scheme 'ftp'"),
        ("example.com/x", "http:// or https://"),
        ("https:///no-host", "webhook.url needs a host"),
        ("https://exa mple.com/", "webhook.url needs a host and no spaces"),
        ("https://example.com:99999/", "webhook.url is not a valid URL"),
        ("https://example.com/" + "a" * 3000, "webhook.url has 3020 characters"),
    ],
)
def test_a_bad_url_is_refused_naming_the_field(url: str, fragment: str) -> None:
    refused(webhook(url=url), fragment)


def test_a_missing_webhook_is_refused() -> None:
    refused(None, "webhook is required")


def test_an_unknown_event_kind_is_refused_listing_the_kinds() -> None:
    refused(webhook(event_kinds=["geofence.enter", "geofence.entered"]), "'geofence.entered'")
    refused(webhook(event_kinds=["x"]), "webhook.event_kinds", *EVENT_KINDS)


def test_at_most_100_geofence_ids() -> None:
    parse_webhook(webhook(geofence_ids=[f"z-{i}" for i in range(100)]))
    refused(webhook(geofence_ids=[f"z-{i}" for i in range(101)]), "101 ids", "at most 100")
    refused(webhook(geofence_ids=["bad id"]), "webhook.geofence_ids entry")


def test_labels_are_validated_like_a_zones() -> None:
    refused(webhook(labels={"Bad Key": "x"}), "label key 'Bad Key' is not valid")


@pytest.mark.parametrize(
    ("duration", "ok"),
    [
        (Duration(seconds=1), True),
        (Duration(seconds=7 * 86_400), True),
        (Duration(nanos=999_000_000), False),
        (Duration(seconds=7 * 86_400, nanos=1), False),
        (Duration(seconds=0), False),
        (Duration(seconds=-5), False),
    ],
)
def test_max_retry_is_1_second_to_7_days(duration: Duration, ok: bool) -> None:
    if ok:
        assert (
            parse_webhook(webhook(max_retry=duration)).max_retry_s == duration.ToNanoseconds() / 1e9
        )
    else:
        refused(
            webhook(max_retry=duration), "webhook.max_retry must be between 1 second and 7 days"
        )


def test_secrets_are_random_and_long() -> None:
    first, second = new_secret(), new_secret()
    assert first != second
    assert len(first) >= 40


def test_replay_ids_and_page_sizes() -> None:
    assert validate_event_ids([]) == []
    assert validate_event_ids(["0:1-2"]) == ["0:1-2"]
    with pytest.raises(InvalidArgument, match="event_ids entry"):
        validate_event_ids(["no spaces"])
    assert dead_letter_page_size(0) == 100
    assert dead_letter_page_size(5000) == 1000
    with pytest.raises(InvalidArgument, match="page_size"):
        dead_letter_page_size(-1)


# --- which events a subscription wants ---------------------------------------------------------


def test_no_filter_wants_everything() -> None:
    spec = WebhookSpec("https://x.example")
    assert all(spec.wants(zone_event(kind)) for kind in EVENT_KINDS if kind.startswith("geo"))
    assert spec.wants(ride_event())


def test_kinds_filter_every_event() -> None:
    spec = WebhookSpec("https://x.example", event_kinds=("geofence.exit", "ride.at_pickup"))
    assert spec.wants(zone_event("geofence.exit"))
    assert not spec.wants(zone_event("geofence.enter"))
    assert spec.wants(ride_event("ride.at_pickup"))
    assert not spec.wants(ride_event("ride.left_pickup"))


def test_zones_and_labels_filter_zone_events_only() -> None:
    spec = WebhookSpec("https://x.example", geofence_ids=("z-1",), labels={"kind": "airport"})
    assert spec.wants(zone_event())
    assert not spec.wants(zone_event(zone={**ZONE, "id": "z-2"}))
    assert not spec.wants(zone_event(zone={**ZONE, "l": {"kind": "station"}}))
    assert not spec.wants(zone_event(zone={"id": "z-1", "n": "No labels"}))
    # A ride event has no zone: only the kinds decide.
    assert spec.wants(ride_event())


def test_labels_must_all_match() -> None:
    spec = WebhookSpec("https://x.example", labels={"kind": "airport", "city": "ham"})
    assert not spec.wants(zone_event())
    assert WebhookSpec("https://x.example", labels={"city": "ber"}).wants(zone_event())


# --- the payload and its signature -------------------------------------------------------------


def test_a_zone_event_payload() -> None:
    assert payload(zone_event()) == {
        "id": f"0:{T_MS + 5}-2",
        "kind": "geofence.enter",
        "time": "2025-11-28T12:00:00.123Z",
        "driver_id": "d-7",
        "position": {"latitude": 52.5, "longitude": 13.4},
        "geofence": {
            "id": "z-1",
            "display_name": "Airport",
            "labels": {"kind": "airport", "city": "ber"},
        },
        "reason": "",
    }


def test_a_ride_event_payload_carries_the_ride_not_a_zone() -> None:
    document = payload(ride_event())
    assert document["ride"] == {"id": "ride-1", "distance_m": 12.5}
    assert document["kind"] == "ride.at_pickup"
    assert "geofence" not in document
    assert json.loads(body(ride_event())) == document


def test_times_are_rfc3339_utc() -> None:
    text = rfc3339(T_MS)
    assert text == "2025-11-28T12:00:00.123Z"
    assert datetime.fromisoformat(text) == datetime(2025, 11, 28, 12, 0, 0, 123_000, tzinfo=UTC)


def test_the_signature_verifies_with_hmac_sha256() -> None:
    raw = body(zone_event())
    header = signature("s3cret", raw, 1_800_000_000)
    fields = dict(part.split("=", 1) for part in header.split(","))
    assert fields["t"] == "1800000000"
    expected = hmac.new(b"s3cret", b"1800000000." + raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    # Another secret, time or body does not verify.
    assert signature("other", raw, 1_800_000_000) != header
    assert signature("s3cret", raw, 1_800_000_001) != header
    assert signature("s3cret", raw + b" ", 1_800_000_000) != header


def test_the_headers_of_an_attempt() -> None:
    raw = body(zone_event())
    sent = headers("k", "0:1-2", "geofence.enter", raw, 1_800_000_000)
    assert sent == {
        "Content-Type": "application/json",
        "Idempotency-Key": "0:1-2",
        "Ridemesh-Event": "geofence.enter",
        "Ridemesh-Signature": signature("k", raw, 1_800_000_000),
    }


# --- backoff -----------------------------------------------------------------------------------


class Highest:
    """A random source that always picks the top of the range (and records the ranges)."""

    def __init__(self) -> None:
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return b


def test_the_backoff_ceiling_doubles_from_half_a_second_to_30() -> None:
    rng = Highest()
    ceilings = [backoff_s(attempt, rng) for attempt in range(1, 10)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert all(low == 0.0 for low, _ in rng.ranges)  # full jitter: from zero
    assert backoff_s(10_000, rng) == 30.0  # no overflow far out


def test_the_backoff_is_jittered_within_its_ceiling() -> None:
    rng = random.Random(7)
    for attempt in (1, 3, 20):
        samples = [backoff_s(attempt, rng) for _ in range(500)]
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) - min(samples) > ceiling / 2  # spread, not a fixed wait


def test_the_backoff_takes_its_own_bounds() -> None:
    assert backoff_s(5, Highest(), base_s=0.05, cap_s=0.2) == 0.2


# --- the API's view ----------------------------------------------------------------------------


def test_the_secret_is_shown_only_when_asked() -> None:
    stored = StoredWebhook(
        "w-1",
        WebhookSpec("https://x.example", ("geofence.enter",), max_retry_s=90.0),
        "the-secret",
        datetime(2026, 12, 7, tzinfo=UTC),
        Counters(3, 2, 1, "boom", datetime(2026, 12, 7, 1, tzinfo=UTC)),
    )
    created = to_message(stored, with_secret=True)
    assert created.secret == "the-secret"
    assert created.max_retry.seconds == 90
    assert not created.HasField("health")
    listed = to_message(stored, Backlog(4, 1.5))
    assert listed.secret == ""
    health = listed.health
    assert (health.delivered, health.retried, health.dead_lettered) == (3, 2, 1)
    assert (health.backlog, health.lag.ToNanoseconds(), health.last_error) == (
        4,
        1_500_000_000,
        "boom",
    )
