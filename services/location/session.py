"""The state of one driver's live stream: admission of fixes and what the next ack says (pure)."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from ridemesh.v1.location_service_pb2 import LocationUpdate
from services.domain.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.domain.fix_quality import FixQuality, QualitySettings
from services.domain.validation import FixLimits, validate_update
from services.live.ingest import StreamId
from services.location.throttle import TokenBucket

# A history row's key: (driver_id, recorded_at, seq), as the persister writes it.
FixKey = tuple[str, datetime, int]


@dataclass(frozen=True, slots=True)
class InFlight:
    """An accepted fix not yet known to be in PostgreSQL."""

    entry_id: StreamId
    seq: int
    key: FixKey
    accepted_s: float  # monotonic clock


class DriverSession:
    """One StreamLocations call: checks each fix and tracks accepted and durable seqs."""

    __slots__ = (
        "driver_id",
        "last_seq",
        "accepted_seq",
        "durable_seq",
        "ack_due",
        "accepted_news",
        "accepted_since_s",
        "quality",
        "_bucket",
        "_limits",
        "_in_flight",
    )

    def __init__(
        self, limits: FixLimits, bucket: TokenBucket, quality: QualitySettings | None = None
    ) -> None:
        self.driver_id: str | None = None
        self.last_seq = 0
        self.accepted_seq = 0
        self.durable_seq = 0
        # durable_seq moved: worth an ack at once.
        self.ack_due = False
        # Fixes were accepted since the last ack: worth one only if durability is slow to come.
        self.accepted_news = False
        self.accepted_since_s = 0.0  # when the oldest fix no ack has mentioned was accepted
        self._bucket = bucket
        self._limits = limits
        # The quality filters' memory of this stream's fixes (the servicer consults it).
        self.quality = FixQuality(quality or QualitySettings())
        # Accepted fixes not yet known to be committed, oldest first.
        self._in_flight: deque[InFlight] = deque()

    def bind(self, driver_id: str, last_stored_seq: int) -> None:
        """Fixes the stream's driver at its first fix, continuing from the seq stored live."""
        self.driver_id = driver_id
        self.last_seq = last_stored_seq

    def admit(self, update: LocationUpdate, now_s: float, mono_s: float) -> float:
        """Checks a fix: driver, content, seq, then rate. Returns its recorded time (epoch s)."""
        if self.driver_id is not None and update.driver_id != self.driver_id:
            raise InvalidArgument(
                f"driver_id {update.driver_id!r} differs from this stream's driver "
                f"{self.driver_id!r}; open one stream per driver"
            )
        recorded_s = validate_update(update, now_s, self._limits)
        if update.seq <= self.last_seq:
            raise FailedPrecondition(
                f"seq {update.seq} is not greater than the last accepted seq {self.last_seq}; "
                "send new fixes with increasing seq, and re-send buffered ones with UploadLocations"
            )
        if not self._bucket.allow(mono_s):
            raise ResourceExhausted(
                f"too many fixes: at most {self._bucket.rate:g} per second are accepted per "
                f"driver; fix seq {update.seq} was dropped"
            )
        return recorded_s

    def accepted(self, seq: int, entry_id: StreamId, key: FixKey, mono_s: float) -> None:
        """Records a fix that is now in the live state and the ingest log."""
        self.last_seq = seq
        self.accepted_seq = seq
        self._in_flight.append(InFlight(entry_id, seq, key, mono_s))
        if not self.accepted_news:
            self.accepted_news = True
            self.accepted_since_s = mono_s

    def due(self, below: StreamId | None, mono_s: float, lost_after_s: float) -> list[FixKey]:
        """Keys of the in-flight fixes PostgreSQL should hold by now: those whose ingest entry is
        below the persisters' watermark, and any accepted `lost_after_s` ago."""
        return [f.key for f in self._in_flight if _is_due(f, below, mono_s, lost_after_s)]

    def settle(
        self,
        stored: Collection[FixKey],
        below: StreamId | None,
        mono_s: float,
        lost_after_s: float,
    ) -> InFlight | None:
        """Moves durable_seq past the oldest in-flight fixes that PostgreSQL holds (`stored`,
        read after `below`), and returns the first fix that is lost: due, yet not stored.

        durable_seq never passes a fix missing from PostgreSQL, whatever Redis says: the ingest
        watermark only decides which fixes must be there by now. A fix below it and not stored
        was lost with Redis's data (an empty restart, an AOF missing its last second, a failover
        to a replica that lagged), because the persisters acknowledge an entry only after its
        commit."""
        while self._in_flight:
            head = self._in_flight[0]
            if head.key in stored:
                self._in_flight.popleft()
                self.durable_seq = head.seq
                self.ack_due = True
                continue
            if _is_due(head, below, mono_s, lost_after_s):
                return head
            break
        return None

    def ack_wanted(self, mono_s: float, accepted_every_s: float) -> bool:
        """Whether to ack now: durable_seq moved, or fixes were accepted and no ack went out for
        `accepted_every_s` since the first of them (PostgreSQL slow or away). One ack carries both
        seqs, so an app that sends every few seconds gets about one ack per fix rather than two."""
        waited = mono_s - self.accepted_since_s
        news = self.ack_due or (self.accepted_news and waited >= accepted_every_s)
        if news:
            self.ack_due = False
            self.accepted_news = False
        return news

    @property
    def fully_durable(self) -> bool:
        return not self._in_flight


def _is_due(fix: InFlight, below: StreamId | None, mono_s: float, lost_after_s: float) -> bool:
    below_watermark = below is not None and fix.entry_id < below
    return below_watermark or mono_s - fix.accepted_s >= lost_after_s
