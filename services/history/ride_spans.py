"""When a driver's rides were assigned, picked up and ended, read from the ride log for trips."""

from __future__ import annotations

from datetime import datetime, timedelta

from services.domain.micros import to_micros
from services.domain.trips import RideSpan
from services.history.store import HistoryStore

# Rides are looked for among those created up to this long before the range: a ride lasts
# minutes to hours, and the bound keeps the read an index range on (driver_id, create_time).
MAX_RIDE_LENGTH = timedelta(days=1)

# Times from the transition log (ride_events), by the states' stored names. A read-only query
# of RideService's tables: the geo service reads them here, never through services.ride.
_SPANS = """
SELECT r.ride_id,
       min(e.event_time) FILTER (WHERE e.to_state = 'RIDE_STATE_DRIVER_ASSIGNED'),
       min(e.event_time) FILTER (WHERE e.to_state = 'RIDE_STATE_IN_PROGRESS'),
       min(e.event_time) FILTER (
           WHERE e.to_state IN ('RIDE_STATE_COMPLETED', 'RIDE_STATE_CANCELLED'))
FROM rides AS r
JOIN ride_events AS e ON e.ride_id = r.ride_id
WHERE r.driver_id = $1 AND r.create_time >= $2 AND r.create_time < $3
GROUP BY r.ride_id
"""


async def ride_spans(
    history: HistoryStore, driver_id: str, start: datetime, end: datetime
) -> list[RideSpan]:
    """The driver's rides that were assigned before `end` and had not ended before `start`,
    in assignment order."""
    async with history.connection() as apg:
        records = await apg.fetch(_SPANS, driver_id, start - MAX_RIDE_LENGTH, end)
    spans = []
    for ride_id, assigned, picked_up, ended in records:
        if assigned is None or assigned >= end or (ended is not None and ended < start):
            continue
        spans.append(RideSpan(ride_id, to_micros(assigned), _maybe(picked_up), _maybe(ended)))
    spans.sort(key=lambda span: span.assigned)
    return spans


def _maybe(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)
