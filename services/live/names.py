"""Every Redis key and channel name Ridemesh uses: the real contract between its services.

No other module spells a name (a test checks it); Lua scripts get every key in KEYS.

The live state is split into partitions by driver (docs/scaling.md). A driver's keys and
channels, and the geo index, ingest log and cell channels of the partition its fixes go to,
carry the partition's hash tag, so one batch of one partition's fixes is one script on one Redis
Cluster shard. One Redis holds every partition; every process of a mesh must use the same count
(it travels in the Redis URL).
"""

from __future__ import annotations

import zlib
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# At most this many partitions (their tags are found by search, about `count` tries each).
MAX_PARTITIONS = 256

_count = 1


def use_partitions(count: int) -> None:
    """Sets the process's partition count (its wiring does, from the Redis URL, before any
    name is used)."""
    if not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"the partition count must be 1 to {MAX_PARTITIONS}, got {count}")
    global _count
    _count = count


def partition_count() -> int:
    return _count


def partitions() -> range:
    """Every partition, for work that visits them all (queries, persisters, zone tracking)."""
    return range(_count)


def partition_of(driver_id: str) -> int:
    """The partition a driver's fixes and keys belong to (stable across processes)."""
    return zlib.crc32(driver_id.encode()) % _count


@cache
def _tags(count: int) -> tuple[str, ...]:
    """A hash tag per partition whose slot falls in the partition's equal share of the slots,
    so partitions spread evenly over shards that split the slots evenly (as
    `redis-cli --cluster create` does)."""
    tags = []
    for i in range(count):
        low, high = (
            i * REDIS_CLUSTER_HASH_SLOTS // count,
            (i + 1) * REDIS_CLUSTER_HASH_SLOTS // count,
        )
        tags.append(
            next(t for k in range(1 << 20) if low <= key_slot((t := f"p{i}.{k}").encode()) < high)
        )
    return tuple(tags)


def tag(partition: int) -> str:
    """The partition's hash tag, braces included."""
    return "{" + _tags(_count)[partition] + "}"


def _driver_tag(driver_id: str) -> str:
    return tag(partition_of(driver_id))


# --- Live positions (LocationService writes; GeoQueryService and RideService read) ------------


def geo_key(partition: int) -> str:
    """The partition's live geo index: member driver_id at its last live position."""
    return f"rm:{tag(partition)}:geo"


def polar_key(partition: int) -> str:
    """The partition's drivers beyond the geo index's latitude limit, scored by fix time
    (searched by brute force)."""
    return f"rm:{tag(partition)}:geo:polar"


# Ride requests waiting for a driver: a geo set, member ride_id at the pickup (kept by RideService).
OPEN_REQUESTS_KEY = "rm:geo:requests"


def driver_key(driver_id: str) -> str:
    """The driver's last live fix (`p`), its time (`t`), seq (`s`), availability (`a`) and
    activity (`v`, a DriverActivity number: services/live/activity.py)."""
    return f"rm:{_driver_tag(driver_id)}:driver:{driver_id}"


def assigned_key(driver_id: str) -> str:
    """The rider whose active ride the driver is assigned to (kept by RideService's dispatcher,
    read by LocationService to let that rider watch the driver)."""
    return f"rm:{_driver_tag(driver_id)}:assigned:{driver_id}"


def ride_target_key(driver_id: str) -> str:
    """The active ride the driver is on its way to or driving (ride id, state, pickup, drop-off,
    auto-arrive) and its proximity flags with the (time, seq) of the fix that set them (kept by
    RideService: effects set it, proximity tracking reads and updates it)."""
    return f"rm:{_driver_tag(driver_id)}:ride-target:{driver_id}"


def ride_targets_key(partition: int) -> str:
    """The partition's drivers that have a ride target (a set), so proximity tracking reads the
    targets of those drivers only."""
    return f"rm:{tag(partition)}:ride-targets"


# RideService replicas' consumer group on each ingest log: proximity events of active rides.
RIDES_GROUP = "rides"


# --- The ingest log (LocationService appends; the persisters consume) --------------------------


def ingest_stream(partition: int) -> str:
    """The partition's log of accepted fixes."""
    return f"rm:{tag(partition)}:ingest"


PERSIST_GROUP = "persisters"
# Entries the persisters could never store (undecodable, or refused by PostgreSQL), with why.
INGEST_DEAD_LETTERS = "rm:ingest:dead"


# --- Fan-out channels (sharded pub/sub: SPUBLISH / SSUBSCRIBE) ---------------------------------


def driver_channel(driver_id: str) -> str:
    """DriverLocation bytes of every live fix of one driver."""
    return f"rm:{_driver_tag(driver_id)}:ch:driver:{driver_id}"


def cell_channel(partition: int, cell: tuple[int, int]) -> str:
    """DriverLocation bytes of every live fix of the partition's drivers inside one grid cell
    (domain.area.cell_of); a watcher of a cell subscribes to it in every partition."""
    return f"rm:{tag(partition)}:ch:cell:{cell[0]}:{cell[1]}"


# Subscribed for the life of each fan-out hub, so its pub/sub connection always exists.
HUB_KEEPALIVE_CHANNEL = "rm:ch:hub"


def ride_channel(ride_id: str) -> str:
    """Ride proto bytes, published after every committed change of that ride."""
    return f"rm:ch:ride:{ride_id}"


def control_channel(driver_id: str) -> str:
    """StreamLocationsResponse bytes for the driver's own stream (offer, offer_withdrawn,
    availability, sampling_hint with the activity alone, fix_request)."""
    return f"rm:{_driver_tag(driver_id)}:ch:control:{driver_id}"


def chat_channel(ride_id: str) -> str:
    """ChatMessage bytes of a ride's chat."""
    return f"rm:ch:chat:{ride_id}"


# --- Geofences (GeoQueryService) ---------------------------------------------------------------

# Announces that a zone changed, so every GeoQuery replica reloads its index.
ZONE_CHANGES_CHANNEL = "rm:ch:geofences"
# The GeoQuery replicas' consumer group on each ingest log: each fix is tracked by one replica.
ZONES_GROUP = "zones"


def fence_members_key(partition: int) -> str:
    """Which of the partition's drivers hold which zones: a sorted set of "zone_id|driver_id"
    (score 0), so a zone's drivers are one range (a zone that ends sends each an EXIT)."""
    return f"rm:{tag(partition)}:gf:members"


def ended_zones_key(partition: int) -> str:
    """Zones that ended (deleted or expired): the partition's fixes no longer enter them, even on
    a replica whose index still has them."""
    return f"rm:{tag(partition)}:gf:ended"


def fence_state_key(driver_id: str) -> str:
    """The zones a driver is inside and the (time, seq) of the fix that said so."""
    return f"rm:{_driver_tag(driver_id)}:gf:{driver_id}"


# --- The event log (zone and ride events; services/live/events.py) ------------------------------


def events_stream(partition: int) -> str:
    """The partition's log of zone and ride events, the stream id being the event's offset."""
    return f"rm:{tag(partition)}:events"


def events_meta_key(partition: int) -> str:
    """The partition's event log's hash: `e` a random epoch set by the first writer (another one
    means the log was lost, Redis came back empty, and resume tokens from before are void), `n`
    events appended, `x` events trimmed."""
    return f"rm:{tag(partition)}:events:meta"


def webhook_lease_key(partition: int, webhook_id: str) -> str:
    """Which GeoQuery replica delivers a webhook subscription's events of the partition now (a
    lease: SET NX PX, renewed by its holder)."""
    return f"rm:{tag(partition)}:webhook:lease:{webhook_id}"


# Set once by a RideService replica; missing means Redis lost its data (an empty restart), so
# every ride in progress owes its live state again (services/ride/effects.py).
LIVE_EPOCH_KEY = "rm:epoch"


# --- Dispatch (RideService) --------------------------------------------------------------------

# Rides waiting to search for drivers again, scored by when.
SEARCH_RETRY_KEY = "rm:dispatch:search-retry"


def offer_key(ride_id: str) -> str:
    """The driver a ride is offered to now, and until when."""
    return f"rm:dispatch:offer:{ride_id}"
