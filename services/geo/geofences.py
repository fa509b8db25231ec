"""The geofence RPCs: create, get, list (AIP-158 pages, label filter), delete, and CheckPoint."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ridemesh.v1 import common_pb2
from ridemesh.v1 import geo_query_service_pb2 as pb
from services.domain.errors import InvalidArgument, NotFound
from services.domain.validation import required_id
from services.geo.geofence_store import Cursor, GeofenceStore, StoredGeofence
from services.geo.zone_cache import announce_change
from services.geo.zone_index import ZoneTiming
from services.geo.zones import MAX_LABEL_VALUE, parse_geofence, validate_label_key

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_FILTER_SYNTAX = (
    "use `key=value` to match one label (for example `kind=airport`), or leave it empty"
)

Label = tuple[str, str]


async def create_geofence(
    store: GeofenceStore, redis: Redis, request: pb.CreateGeofenceRequest
) -> pb.CreateGeofenceResponse:
    if not request.HasField("geofence"):
        raise InvalidArgument("geofence is required")
    geofence = request.geofence
    timing = ZoneTiming(
        geofence.entry_delay.ToNanoseconds() / 1e9,
        geofence.dwell_time.ToNanoseconds() / 1e9,
        geofence.hysteresis_m,
    )
    expire_time = (
        geofence.expire_time.ToDatetime(tzinfo=UTC) if geofence.HasField("expire_time") else None
    )
    parsed = parse_geofence(
        geofence.display_name, geofence.geojson, geofence.labels, timing, expire_time
    )
    stored = await store.create(parsed)
    await _announce(redis)
    return pb.CreateGeofenceResponse(geofence=to_message(stored))


async def get_geofence(
    store: GeofenceStore, request: pb.GetGeofenceRequest
) -> pb.GetGeofenceResponse:
    stored = await store.get(required_id(request.geofence_id, "geofence_id"))
    if stored is None:
        raise NotFound(f"geofence {request.geofence_id!r} does not exist")
    return pb.GetGeofenceResponse(geofence=to_message(stored))


async def list_geofences(
    store: GeofenceStore, request: pb.ListGeofencesRequest
) -> pb.ListGeofencesResponse:
    page_size = _page_size(request.page_size)
    label = parse_filter(request.filter)
    after = decode_page_token(request.page_token, label) if request.page_token else None
    page, next_cursor = await store.list(page_size, after, label)
    token = encode_page_token(next_cursor, label) if next_cursor else ""
    return pb.ListGeofencesResponse(
        geofences=[to_message(stored) for stored in page], next_page_token=token
    )


async def delete_geofence(
    store: GeofenceStore, redis: Redis, request: pb.DeleteGeofenceRequest
) -> pb.DeleteGeofenceResponse:
    if not await store.delete(required_id(request.geofence_id, "geofence_id")):
        raise NotFound(f"geofence {request.geofence_id!r} does not exist")
    await _announce(redis)
    return pb.DeleteGeofenceResponse()


async def check_point(store: GeofenceStore, request: pb.CheckPointRequest) -> pb.CheckPointResponse:
    latitude, longitude = validate_point(request.point if request.HasField("point") else None)
    found = await store.containing(latitude, longitude)
    return pb.CheckPointResponse(geofences=[to_message(stored) for stored in found])


def to_message(stored: StoredGeofence) -> pb.Geofence:
    message = pb.Geofence(
        geofence_id=stored.geofence_id,
        display_name=stored.display_name,
        geojson=stored.geojson,
        labels=stored.labels,
    )
    if stored.create_time is not None:
        message.create_time.FromDatetime(stored.create_time)
    timing = stored.timing
    if timing.entry_delay_s:
        message.entry_delay.FromNanoseconds(round(timing.entry_delay_s * 1e9))
    if timing.dwell_s:
        message.dwell_time.FromNanoseconds(round(timing.dwell_s * 1e9))
    message.hysteresis_m = timing.hysteresis_m
    if stored.expire_time is not None:
        message.expire_time.FromDatetime(stored.expire_time)
    return message


def validate_point(point: common_pb2.LatLng | None) -> tuple[float, float]:
    """(latitude, longitude) of a point that is set, finite and in range; else InvalidArgument."""
    if point is None:
        raise InvalidArgument("point is required")
    latitude, longitude = point.latitude, point.longitude
    if not (math.isfinite(latitude) and math.isfinite(longitude)):
        raise InvalidArgument(
            f"point must be finite numbers, got latitude={latitude}, longitude={longitude}"
        )
    if not -90.0 <= latitude <= 90.0:
        raise InvalidArgument(f"point.latitude must be between -90 and 90 degrees, got {latitude}")
    if not -180.0 <= longitude <= 180.0:
        raise InvalidArgument(
            f"point.longitude must be between -180 and 180 degrees, got {longitude}"
        )
    return latitude, longitude


def parse_filter(text: str) -> Label | None:
    """The one label a `key=value` filter asks for; None for an empty filter."""
    text = text.strip()
    if not text:
        return None
    key, equals, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not equals or not key:
        raise InvalidArgument(f"filter {text!r} is not understood: {_FILTER_SYNTAX}")
    try:
        validate_label_key(key)
    except InvalidArgument as exc:
        raise InvalidArgument(f"filter {text!r}: {exc}; {_FILTER_SYNTAX}") from exc
    if len(value) > MAX_LABEL_VALUE:
        raise InvalidArgument(
            f"filter value has {len(value)} characters; label values have at most {MAX_LABEL_VALUE}"
        )
    return key, value


def encode_page_token(cursor: Cursor, label: Label | None) -> str:
    """An opaque token holding where the page ended and the filter it was made for."""
    document = {
        "t": cursor.create_time.isoformat(),
        "id": cursor.geofence_id,
        "f": list(label) if label else None,
    }
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, label: Label | None) -> Cursor:
    """The cursor in a token from encode_page_token; InvalidArgument if it is not one, or was
    made for another filter (AIP-158: the other request fields must not change between pages)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        document = json.loads(raw)
        cursor = Cursor(datetime.fromisoformat(document["t"]), str(document["id"]))
        made_for = tuple(document["f"]) if document["f"] is not None else None
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(
            "page_token is not valid: pass the next_page_token of the previous response unchanged"
        ) from exc
    if cursor.create_time.tzinfo is None:
        raise InvalidArgument("page_token is not valid: it holds no time zone")
    if made_for != label:
        raise InvalidArgument(
            "page_token was made for a different filter; keep the filter unchanged between pages "
            "or start again without a page_token"
        )
    return cursor


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(
            f"page_size must be 0 (for {DEFAULT_PAGE_SIZE}) or positive, got {requested}"
        )
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    # AIP-158: a page size above the maximum is coerced down, not refused.
    return min(requested, MAX_PAGE_SIZE)


async def _announce(redis: Redis) -> None:
    try:
        await announce_change(redis)
    except RedisError:
        # The change is committed; replicas still pick it up by polling within zone_refresh_s.
        log.exception("could not announce a geofence change; replicas catch up at their next poll")
