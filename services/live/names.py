"""Every Redis key and channel name Ridemesh uses: the real contract between its services.

No other module spells a name (a test checks it); Lua scripts get every key in KEYS.
"""

from __future__ import annotations

# --- Live positions (LocationService writes; GeoQueryService and RideService read) ------------

# The live geo index: member driver_id at its last live position.
GEO_KEY = "rm:geo"
# Drivers beyond the geo index's latitude limit, scored by fix time (searched by brute force).
POLAR_KEY = "rm:geo:polar"
# Ride requests waiting for a driver: a geo set, member ride_id at the pickup (kept by RideService).
OPEN_REQUESTS_KEY = "rm:geo:requests"


def driver_key(driver_id: str) -> str:
    """The driver's last live fix (`p`), its time (`t`), seq (`s`) and availability (`a`)."""
    return f"rm:driver:{driver_id}"


def assigned_key(driver_id: str) -> str:
    """The rider whose active ride the driver is assigned to (kept by RideService's dispatcher,
    read by LocationService to let that rider watch the driver)."""
    return f"rm:assigned:{driver_id}"


# --- The ingest log (LocationService appends; the persisters consume) --------------------------

INGEST_STREAM = "rm:ingest"
PERSIST_GROUP = "persisters"
# Entries the persisters could never store (undecodable, or refused by PostgreSQL), with why.
INGEST_DEAD_LETTERS = "rm:ingest:dead"


# --- Fan-out channels --------------------------------------------------------------------------


def driver_channel(driver_id: str) -> str:
    """DriverLocation bytes of every live fix of one driver."""
    return f"rm:ch:driver:{driver_id}"


def cell_channel(cell: tuple[int, int]) -> str:
    """DriverLocation bytes of every live fix inside one grid cell (domain.area.cell_of)."""
    return f"rm:ch:cell:{cell[0]}:{cell[1]}"


# Every cell channel at once (GeoQueryService's zone tracking, WatchArea over huge boxes).
CELL_PATTERN = "rm:ch:cell:*"
# Subscribed for the life of each fan-out hub, so its pub/sub connection always exists.
HUB_KEEPALIVE_CHANNEL = "rm:ch:hub"


def ride_channel(ride_id: str) -> str:
    """Ride proto bytes, published after every committed change of that ride."""
    return f"rm:ch:ride:{ride_id}"


def control_channel(driver_id: str) -> str:
    """StreamLocationsResponse bytes for the driver's own stream (offer / offer_withdrawn)."""
    return f"rm:ch:control:{driver_id}"


def chat_channel(ride_id: str) -> str:
    """ChatMessage bytes of a ride's chat."""
    return f"rm:ch:chat:{ride_id}"


# --- Geofences (GeoQueryService) ---------------------------------------------------------------

# Announces that a zone changed, so every GeoQuery replica reloads its index.
ZONE_CHANGES_CHANNEL = "rm:ch:geofences"
# Geofence ENTER/EXIT transitions, as batches, for every WatchGeofenceEvents watcher.
FENCE_EVENTS_CHANNEL = "rm:ch:gfevents"


def fence_state_key(driver_id: str) -> str:
    """The zones a driver is inside and the (time, seq) of the fix that said so."""
    return f"rm:gf:{driver_id}"


# Set once by a RideService replica; missing means Redis lost its data (an empty restart), so
# every ride in progress owes its live state again (services/ride/effects.py).
LIVE_EPOCH_KEY = "rm:epoch"


# --- Dispatch (RideService) --------------------------------------------------------------------

# Rides waiting to search for drivers again, scored by when.
SEARCH_RETRY_KEY = "rm:dispatch:search-retry"


def offer_key(ride_id: str) -> str:
    """The driver a ride is offered to now, and until when."""
    return f"rm:dispatch:offer:{ride_id}"
