"""A driver app as the protocol asks it to behave, for fault tests: it streams fixes, keeps
every fix it has not seen covered by a durable ack (and every fix refused in-band), and when its
stream ends it sends those again with UploadLocations and opens a new stream.

If the server ever acked a fix durable that PostgreSQL does not hold, the app would have dropped
it, and the final check (every fix made is stored exactly once) fails."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc import aio

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from tests.e2e.clients import DriverStream, fix

Metadata = tuple[tuple[str, str], ...]
# What an app must never see in a status message: addresses, exception classes, driver errors.
LEAKS = ("127.0.0.1", "Error 111", "Errno", "Exception", "Error(", "redis.", "asyncpg", "<class")


@dataclass
class StreamRecord:
    """What one StreamLocations call saw."""

    durable_seqs: list[int] = field(default_factory=list)
    accepted_seqs: list[int] = field(default_factory=list)
    rejected: list[pb.LocationRejected] = field(default_factory=list)
    ended: grpc.StatusCode | None = None
    ended_message: str = ""


class DriverApp:
    """One driver: `step()` makes and sends the next fix; `recover()` after a stream ended."""

    def __init__(
        self,
        stub: Callable[[], location_grpc.LocationServiceAsyncStub],
        driver_id: str,
        me: Metadata,
    ) -> None:
        self._stub = stub
        self.driver_id = driver_id
        self._me = me
        self.made: dict[int, pb.LocationUpdate] = {}
        # Fixes not yet known to be stored: after the stream's durable_seq, or refused in-band.
        self.unconfirmed: dict[int, pb.LocationUpdate] = {}
        self.streams: list[StreamRecord] = []
        self.uploads_refused: list[aio.AioRpcError] = []
        self._stream: DriverStream | None = None
        self._record = StreamRecord()

    @property
    def record(self) -> StreamRecord:
        return self._record

    def open(self) -> None:
        self._stream = DriverStream(self._stub(), self._me)
        self._record = StreamRecord()
        self.streams.append(self._record)

    def step(self) -> None:
        """Makes the next fix and sends it on the open stream."""
        assert self._stream is not None
        seq = len(self.made) + 1
        update = fix(self.driver_id, seq, latitude=12.9716 + seq * 1e-5)
        self.made[seq] = update
        self.unconfirmed[seq] = update
        self._stream.send(update)

    def absorb(self) -> None:
        """Reads what the stream said so far: drops fixes a durable ack covers."""
        stream = self._stream
        assert stream is not None
        record = self._record
        record.accepted_seqs = [ack.seq for ack in stream.acks]
        record.durable_seqs = [ack.durable_seq for ack in stream.acks]
        record.rejected = list(stream.rejected)
        refused = {r.seq for r in stream.rejected}
        durable = max(record.durable_seqs, default=0)
        for seq in [s for s in self.unconfirmed if s <= durable and s not in refused]:
            del self.unconfirmed[seq]

    async def wait(self, predicate: Callable[[DriverStream], bool], timeout: float = 30.0) -> None:
        """Waits until `predicate(stream)` holds for the open stream, then absorbs it."""
        stream = self._stream
        assert stream is not None
        await stream.wait_for(lambda: predicate(stream), timeout)
        self.absorb()

    @property
    def stream_ended(self) -> bool:
        return self._stream is not None and self._stream.reader.done()

    async def close(self, timeout: float = 30.0) -> None:
        """Half-closes the stream and waits for it to end (its last fixes durable, or an error)."""
        assert self._stream is not None
        self._stream.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.gather(self._stream.reader, return_exceptions=True)
        self._finish_stream()

    def _finish_stream(self) -> None:
        assert self._stream is not None
        self._stream.close()  # ends the request generator too, however the call ended
        self.absorb()
        reader = self._stream.reader
        if reader.done() and not reader.cancelled():
            error = reader.exception()
            if isinstance(error, aio.AioRpcError):
                self._record.ended = error.code()
                self._record.ended_message = error.details() or ""
            elif error is None:
                self._record.ended = grpc.StatusCode.OK
        else:
            reader.cancel()

    async def recover(self, upload: location_grpc.LocationServiceAsyncStub) -> None:
        """After the stream ended: sends what is unconfirmed with UploadLocations (again until
        it is taken), then opens a new stream."""
        self._finish_stream()
        await self.upload_unconfirmed(upload)
        self.open()

    async def upload_unconfirmed(
        self, upload: location_grpc.LocationServiceAsyncStub, timeout: float = 60.0
    ) -> None:
        async with asyncio.timeout(timeout):
            while self.unconfirmed:
                batch = [self.unconfirmed[s] for s in sorted(self.unconfirmed)][:500]
                try:
                    reply = await upload.UploadLocations(
                        pb.UploadLocationsRequest(updates=batch), metadata=self._me, timeout=10
                    )
                except aio.AioRpcError as error:
                    self.uploads_refused.append(error)
                    await asyncio.sleep(0.5)
                    continue
                assert not reply.rejected, reply.rejected
                for update in batch:
                    del self.unconfirmed[update.seq]
