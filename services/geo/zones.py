"""Validates a geofence as a client sends it (name, GeoJSON, labels) into what the store keeps."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shapely.geometry import MultiPolygon, Polygon
from shapely.validation import explain_validity

from services.domain.errors import InvalidArgument
from services.geo.zone_index import ZoneTiming

MAX_VERTICES = 10_000
MAX_DISPLAY_NAME = 200
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
LABEL_KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
# Wider than this and the polygon is ambiguous: it could go either way round the globe.
MAX_LONGITUDE_SPAN = 180.0
# A zone's event timing, at most (ZoneTiming).
MAX_ENTRY_DELAY_S = 86_400.0
MAX_DWELL_S = 7 * 86_400.0
MAX_HYSTERESIS_M = 1_000.0

_GEOMETRY_TYPES = ("Polygon", "MultiPolygon")

Position = tuple[float, ...]
Ring = list[Position]


@dataclass(frozen=True, slots=True)
class ParsedGeofence:
    """A valid zone: `geometry` is a 2-D MultiPolygon in (longitude, latitude) order, `geojson`
    the client's geometry in canonical form (its own type kept, compact, only the GeoJSON keys)."""

    display_name: str
    geometry: MultiPolygon
    geojson: str
    labels: Mapping[str, str] = field(default_factory=dict)
    timing: ZoneTiming = field(default_factory=ZoneTiming)
    expire_time: datetime | None = None


def parse_geofence(
    display_name: str,
    geojson: str,
    labels: Mapping[str, str],
    timing: ZoneTiming = ZoneTiming(),  # noqa: B008  (frozen: one shared default is safe)
    expire_time: datetime | None = None,
    now: datetime | None = None,
) -> ParsedGeofence:
    """Checks every rule a zone must meet; raises InvalidArgument naming the first one broken."""
    name = validate_display_name(display_name)
    checked_labels = validate_labels(labels)
    kind, polygons = _parse_geojson(geojson)
    geometry = _build_geometry(polygons)
    coordinates: Any = polygons if kind == "MultiPolygon" else polygons[0]
    canonical = json.dumps({"type": kind, "coordinates": coordinates}, separators=(",", ":"))
    expiry = validate_expiry(expire_time, now or datetime.now(UTC))
    return ParsedGeofence(
        name, geometry, canonical, checked_labels, validate_timing(timing), expiry
    )


def validate_expiry(expire_time: datetime | None, now: datetime) -> datetime | None:
    """An expiry must lie in the future (a zone that never was would owe nobody an EXIT)."""
    if expire_time is not None and expire_time <= now:
        raise InvalidArgument(
            f"expire_time must be in the future, got {expire_time.isoformat()} "
            f"(now is {now.isoformat(timespec='seconds')}); leave it unset for a zone that "
            "does not expire"
        )
    return expire_time


def validate_timing(timing: ZoneTiming) -> ZoneTiming:
    """Returns the timing, or raises naming the field and its range."""
    for field_name, value, most, unit in (
        ("entry_delay", timing.entry_delay_s, MAX_ENTRY_DELAY_S, "seconds"),
        ("dwell_time", timing.dwell_s, MAX_DWELL_S, "seconds"),
        ("hysteresis_m", timing.hysteresis_m, MAX_HYSTERESIS_M, "metres"),
    ):
        if not (math.isfinite(value) and 0.0 <= value <= most):
            raise InvalidArgument(
                f"{field_name} must be from 0 to {most:,.0f} {unit}, got {value:g}"
            )
    return timing


def validate_display_name(display_name: str) -> str:
    """Returns the name, or raises: 1 to 200 characters, not blank, no control characters."""
    if not display_name or not display_name.strip():
        raise InvalidArgument("display_name is required (1 to 200 characters, not blank)")
    if len(display_name) > MAX_DISPLAY_NAME:
        raise InvalidArgument(
            f"display_name has {len(display_name)} characters; at most {MAX_DISPLAY_NAME} "
            "are allowed"
        )
    for index, char in enumerate(display_name):
        if unicodedata.category(char) == "Cc":
            raise InvalidArgument(
                f"display_name has a control character {char!r} at position {index}; "
                "use printable characters only"
            )
    return display_name


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Returns the labels as a dict, or raises naming the label and the rule it breaks."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"labels has {len(labels)} entries; at most {MAX_LABELS} are allowed")
    for key, value in labels.items():
        validate_label_key(key)
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(
                f"label {key!r} has a value of {len(value)} characters; "
                f"at most {MAX_LABEL_VALUE} are allowed"
            )
    return dict(labels)


def validate_label_key(key: str) -> str:
    """Returns the key, or raises saying which keys are allowed."""
    if not LABEL_KEY_PATTERN.fullmatch(key):
        shown = key if len(key) <= 70 else key[:70] + "…"
        raise InvalidArgument(
            f"label key {shown!r} is not valid: use 1 to 63 characters from a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    return key


def _parse_geojson(text: str) -> tuple[str, list[list[Ring]]]:
    """The geometry type and its polygons (each a list of rings), structurally checked."""
    document = _load_json(text)
    kind = document.get("type")
    if kind not in _GEOMETRY_TYPES:
        raise InvalidArgument(
            f"geojson type must be Polygon or MultiPolygon (a bare geometry, not a Feature), "
            f"got {kind!r}"
        )
    coordinates = document.get("coordinates")
    counter = _VertexCounter()
    if kind == "Polygon":
        return kind, [_parse_polygon(coordinates, "coordinates", counter)]
    if not isinstance(coordinates, list) or not coordinates:
        raise InvalidArgument(
            "geojson coordinates of a MultiPolygon must be a non-empty array of polygons"
        )
    polygons = [
        _parse_polygon(polygon, f"coordinates[{i}]", counter)
        for i, polygon in enumerate(coordinates)
    ]
    return kind, polygons


def _load_json(text: str) -> dict[str, Any]:
    if not text:
        raise InvalidArgument("geojson is required: a GeoJSON Polygon or MultiPolygon geometry")
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError is a ValueError, and so is _reject_constant's
        raise InvalidArgument(f"geojson is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidArgument("geojson is nested too deeply to be a geometry") from exc
    if not isinstance(document, dict):
        raise InvalidArgument(
            f"geojson must be a JSON object with `type` and `coordinates`, "
            f"got a JSON {type(document).__name__}"
        )
    return document


def _reject_constant(constant: str) -> Any:
    # Python's json accepts NaN and Infinity, which JSON itself does not.
    raise ValueError(f"{constant} is not a JSON number")


class _VertexCounter:
    """Counts positions as they are read, so a huge polygon is refused before it is all walked."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n
        if self.count > MAX_VERTICES:
            raise InvalidArgument(
                f"geojson has more than {MAX_VERTICES:,} positions; simplify the zone to at most "
                f"{MAX_VERTICES:,} positions in total"
            )


def _parse_polygon(value: Any, where: str, counter: _VertexCounter) -> list[Ring]:
    if not isinstance(value, list) or not value:
        raise InvalidArgument(
            f"geojson {where} must be a non-empty array of linear rings (the exterior, then holes)"
        )
    return [_parse_ring(ring, f"{where}[{i}]", counter) for i, ring in enumerate(value)]


def _parse_ring(value: Any, where: str, counter: _VertexCounter) -> Ring:
    if not isinstance(value, list):
        raise InvalidArgument(f"geojson ring {where} must be an array of positions")
    counter.add(len(value))
    ring = [_parse_position(position, where, i) for i, position in enumerate(value)]
    if len(ring) < 4:
        raise InvalidArgument(
            f"geojson ring {where} has {len(ring)} positions; a linear ring needs at least 4 "
            "(three corners and the first repeated at the end)"
        )
    if ring[0] != ring[-1]:
        raise InvalidArgument(
            f"geojson ring {where} is not closed: its first position {list(ring[0])} differs from "
            f"its last {list(ring[-1])}; repeat the first position at the end"
        )
    return ring


def _parse_position(value: Any, where: str, index: int) -> Position:
    # On the path of every vertex (up to 10,000 a zone): exact type checks, and the message
    # (with its path) built only when something is wrong.
    if type(value) is not list or len(value) not in (2, 3) or not all(map(_is_coordinate, value)):
        raise InvalidArgument(
            f"geojson position {where}[{index}] must be [longitude, latitude] or "
            f"[longitude, latitude, altitude] of finite numbers, got {_shown(value)}"
        )
    longitude, latitude = value[0], value[1]
    if not -180.0 <= longitude <= 180.0:
        raise InvalidArgument(
            f"geojson position {where}[{index}] has longitude {_shown(longitude)}, "
            "outside [-180, 180]" + _swap_hint(longitude, latitude)
        )
    if not -90.0 <= latitude <= 90.0:
        raise InvalidArgument(
            f"geojson position {where}[{index}] has latitude {_shown(latitude)}, "
            "outside [-90, 90]" + _swap_hint(longitude, latitude)
        )
    return tuple(value)


def _is_coordinate(value: Any) -> bool:
    # Exact types: bool is an int subclass, but `true` is not a coordinate. A huge JSON integer
    # is finite here and left for the range check (math.isfinite would overflow on it).
    kind = type(value)
    return kind is int or (kind is float and math.isfinite(value))


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _swap_hint(longitude: float, latitude: float) -> str:
    if -90.0 <= longitude <= 90.0 and -180.0 <= latitude <= 180.0:
        return " (GeoJSON positions are [longitude, latitude]: are they swapped?)"
    return ""


def _build_geometry(polygons: list[list[Ring]]) -> MultiPolygon:
    shapes = []
    for i, rings in enumerate(polygons):
        longitudes = [position[0] for position in rings[0]]
        span = max(longitudes) - min(longitudes)
        if span > MAX_LONGITUDE_SPAN:
            raise InvalidArgument(
                f"geojson polygon {i} spans {span:g}° of longitude, more than "
                f"{MAX_LONGITUDE_SPAN:g}°; a zone crossing the antimeridian must be split at it "
                "into a MultiPolygon (RFC 7946 §3.1.9)"
            )
        shell, *holes = ([position[:2] for position in ring] for ring in rings)
        shapes.append(Polygon(shell, holes))
    geometry = MultiPolygon(shapes)
    if not geometry.is_valid:
        raise InvalidArgument(
            f"geojson geometry is not valid: {explain_validity(geometry)} "
            "(rings must not cross themselves or each other, holes must lie inside their "
            "exterior, and the polygons of a MultiPolygon must not overlap)"
        )
    return geometry
