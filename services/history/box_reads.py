"""Stored fixes of every driver inside a lat/lng box, in (recorded_at, driver_id, seq) keyset pages.

The box is a latitude/longitude rectangle (it may cross the antimeridian), but a geography `&&`
compares geocentric boxes: an envelope's edges would be great circles, which bulge poleward of
the rectangle's parallels and would miss fixes near its equatorward edge. So the index
pre-filter is the geocentric box of the rectangle itself (the MultiPoint of the rectangle's
points where x, y and z are extreme has exactly that box), and the exact test is the rectangle
on the stored latitude and longitude, so no fix inside is missed and none outside is returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.domain.area import Box
from services.history.store import PARENT_TABLE, FixRow, HistoryStore

# (recorded_at, driver_id, seq) of the last fix of a page: where the next page starts after.
FixKey = tuple[datetime, str, int]

_COLUMNS = """driver_id, ST_Y(location::geometry), ST_X(location::geometry),
       coalesce(heading_deg, 0), coalesce(speed_mps, 0), coalesce(accuracy_m, 0),
       recorded_at, seq, received_at"""
_LNG = "ST_X(location::geometry)"
_LAT = "ST_Y(location::geometry)"
# Byte order for driver ids, so the order (and every cursor) is the same whatever the database's
# locale is.
_ORDER = 'recorded_at, driver_id COLLATE "C", seq'


def _select(crossing: bool, keyed: bool) -> str:
    # $1..$2 time slice, $3 geocentric pre-filter, $4..$7 the rectangle, $8 limit, $9..$11 cursor.
    # The time bounds are plain predicates so partitions outside the slice are pruned and the
    # BRIN index on recorded_at bounds the heap pages read.
    lng = f"({_LNG} >= $6 OR {_LNG} <= $7)" if crossing else f"{_LNG} BETWEEN $6 AND $7"
    after = f"AND ({_ORDER}) > ($9, $10, $11)" if keyed else ""
    return f"""
SELECT {_COLUMNS}
FROM {PARENT_TABLE}
WHERE recorded_at >= $1 AND recorded_at < $2
  AND location && ST_GeogFromText($3)
  AND {_LAT} BETWEEN $4 AND $5 AND {lng}
  {after}
ORDER BY {_ORDER}
LIMIT $8
"""


SELECT_BOX_PAGE = {
    (crossing, keyed): _select(crossing, keyed)
    for crossing in (False, True)
    for keyed in (False, True)
}

# Time slices adapt so one query reads about a page of rows: a full page halves the slice, a
# page that ends the slice doubles it. A slice never goes below a millisecond, so a burst of
# many fixes recorded at one instant is still read page by page through the cursor.
_FIRST_SLICE = timedelta(minutes=5)
_MIN_SLICE = timedelta(milliseconds=1)


def geocentric_cover_wkt(box: Box) -> str:
    """EWKT of a MultiPoint whose geocentric bounding box is exactly the rectangle's."""
    lats = {box.south, box.north}
    if box.south < 0.0 < box.north:
        lats.add(0.0)  # cos(lat) peaks at the equator
    lngs = {box.west, box.east}
    lngs.update(v for v in (-180.0, -90.0, 0.0, 90.0, 180.0) if _lng_in(box, v))
    points = ", ".join(f"({lng!r} {lat!r})" for lat in sorted(lats) for lng in sorted(lngs))
    return f"SRID=4326;MULTIPOINT({points})"


def _lng_in(box: Box, lng: float) -> bool:
    if box.crosses_antimeridian:
        return lng >= box.west or lng <= box.east
    return box.west <= lng <= box.east


@dataclass(frozen=True, slots=True)
class BoxQuery:
    """Which fixes: inside `box`, recorded in [start, end)."""

    box: Box
    start: datetime
    end: datetime


async def box_fixes_page(
    history: HistoryStore,
    box: Box,
    lo: datetime,
    hi: datetime,
    after: FixKey | None,
    limit: int,
) -> list[FixRow]:
    """Up to `limit` fixes inside `box` recorded in [lo, hi), in (recorded_at, driver_id, seq)
    order, strictly after `after` when given."""
    sql = SELECT_BOX_PAGE[(box.crosses_antimeridian, after is not None)]
    args: list[object] = [lo, hi, geocentric_cover_wkt(box), box.south, box.north]
    args += [box.west, box.east, limit]
    if after is not None:
        args += list(after)
    async with history.connection() as apg:
        records = await apg.fetch(sql, *args)
    return [FixRow(*record) for record in records]


async def box_fix_pages(
    history: HistoryStore, query: BoxQuery, page_size: int
) -> AsyncIterator[list[FixRow]]:
    """Every fix of the query once, in order, as pages of at most `page_size` (never empty)."""
    lo, after, width = query.start, None, _FIRST_SLICE
    while lo < query.end:
        hi = min(query.end, lo + width)
        rows = await box_fixes_page(history, query.box, lo, hi, after, page_size)
        if len(rows) >= page_size:
            last = rows[-1]
            # Rows at the cursor's instant may remain, so the next slice starts there.
            lo, after = last.recorded_at, (last.recorded_at, last.driver_id, last.seq)
            width = max(_MIN_SLICE, width / 2)
        else:
            lo, after = hi, None
            width = min(width * 2, query.end - query.start)
        if rows:
            yield rows
