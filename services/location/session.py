"""The state of one driver's live stream: admission of fixes and what the next ack says (pure)."""

from __future__ import annotations

from collections import deque

from ridemesh.v1.location_service_pb2 import LocationUpdate
from services.domain.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.domain.validation import FixLimits, validate_update
from services.live.ingest import StreamId
from services.location.throttle import TokenBucket


class DriverSession:
    """One StreamLocations call: checks each fix and tracks accepted and durable seqs."""

    __slots__ = (
        "driver_id",
        "last_seq",
        "accepted_seq",
        "durable_seq",
        "ack_due",
        "_bucket",
        "_limits",
        "_in_flight",
    )

    def __init__(self, limits: FixLimits, bucket: TokenBucket) -> None:
        self.driver_id: str | None = None
        self.last_seq = 0
        self.accepted_seq = 0
        self.durable_seq = 0
        self.ack_due = False
        self._bucket = bucket
        self._limits = limits
        # Accepted fixes not yet known to be committed, oldest first: (ingest entry id, seq).
        self._in_flight: deque[tuple[StreamId, int]] = deque()

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

    def accepted(self, seq: int, entry_id: StreamId) -> None:
        """Records a fix that is now in the live state and the ingest log."""
        self.last_seq = seq
        self.accepted_seq = seq
        self._in_flight.append((entry_id, seq))
        self.ack_due = True

    def advance(self, committed_below: StreamId | None) -> None:
        """Moves durable_seq past every in-flight fix whose entry id is below the watermark."""
        if committed_below is None:
            return
        while self._in_flight and self._in_flight[0][0] < committed_below:
            _, seq = self._in_flight.popleft()
            self.durable_seq = seq
            self.ack_due = True

    @property
    def fully_durable(self) -> bool:
        return not self._in_flight
