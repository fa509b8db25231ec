"""Helpers the end-to-end tests share: building fixes, driving streams, gRPC-Web framing."""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from grpc import aio

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1.common_pb2 import LatLng

_unique = itertools.count(1)


def new_driver_id(prefix: str = "drv") -> str:
    """A driver id no other test uses, so tests sharing the mesh do not see each other."""
    return f"{prefix}-{time.monotonic_ns()}-{next(_unique)}"


def fix(
    driver_id: str,
    seq: int,
    latitude: float = 12.9716,
    longitude: float = 77.5946,
    recorded_s: float | None = None,
    speed_mps: float = 8.0,
) -> pb.LocationUpdate:
    update = pb.LocationUpdate(
        driver_id=driver_id,
        position=LatLng(latitude=latitude, longitude=longitude),
        heading_deg=90.0,
        speed_mps=speed_mps,
        accuracy_m=5.0,
        seq=seq,
    )
    update.recorded_at.FromNanoseconds(int((recorded_s or time.time()) * 1e9))
    return update


class DriverStream:
    """A driver app's StreamLocations call: send fixes, collect acks and rejections."""

    def __init__(
        self,
        stub: location_grpc.LocationServiceAsyncStub,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        """`metadata` names the driver (a driver streams only as themselves, e.g. the
        `as_driver` fixture's); without it the call carries its channel's token."""
        self._outbox: asyncio.Queue[pb.StreamLocationsRequest | None] = asyncio.Queue()
        self.call = stub.StreamLocations(self._requests(), metadata=metadata)
        self.acks: list[pb.LocationAck] = []
        self.rejected: list[pb.LocationRejected] = []
        self.offers: list[pb.RideOffer] = []
        self.withdrawn: list[pb.RideOfferWithdrawn] = []
        self.hints: list[pb.SamplingHint] = []
        self.fix_requests: list[pb.FixRequest] = []
        self._changed = asyncio.Condition()
        self.reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[pb.StreamLocationsRequest]:
        while (request := await self._outbox.get()) is not None:
            yield request

    async def _read(self) -> None:
        async for response in self.call:
            async with self._changed:
                kind = response.WhichOneof("kind")
                if kind == "ack":
                    self.acks.append(response.ack)
                elif kind == "rejected":
                    self.rejected.append(response.rejected)
                elif kind == "offer":
                    self.offers.append(response.offer)
                elif kind == "offer_withdrawn":
                    self.withdrawn.append(response.offer_withdrawn)
                elif kind == "sampling_hint":
                    self.hints.append(response.sampling_hint)
                elif kind == "fix_request":
                    self.fix_requests.append(response.fix_request)
                self._changed.notify_all()

    def send(self, update: pb.LocationUpdate) -> None:
        self._outbox.put_nowait(pb.StreamLocationsRequest(update=update))

    def heartbeat(self) -> None:
        self._outbox.put_nowait(pb.StreamLocationsRequest(heartbeat=pb.Heartbeat()))

    def close(self) -> None:
        self._outbox.put_nowait(None)

    @property
    def accepted_seq(self) -> int:
        return self.acks[-1].seq if self.acks else 0

    @property
    def durable_seq(self) -> int:
        return self.acks[-1].durable_seq if self.acks else 0

    async def wait_for(self, predicate: object, timeout: float = 15.0) -> None:
        """Waits until `predicate()` holds (checked on every response)."""
        assert callable(predicate)
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def rejection(self, seq: int, timeout: float = 10.0) -> pb.LocationRejected:
        await self.wait_for(lambda: any(r.seq == seq for r in self.rejected), timeout)
        return next(r for r in self.rejected if r.seq == seq)


class Messages:
    """A server stream read by its own task into a queue, so a test can wait for the next
    message with a timeout: cancelling a pending `call.read()` would cancel the whole call."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (message := await self.call.read()) is not aio.EOF:  # type: ignore[attr-defined]
            self._queue.put_nowait(message)

    async def next(self, timeout: float = 15.0) -> Any:
        """The next message; TimeoutError if none came within `timeout` (the call goes on)."""
        getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait(
            [getter, self._task], timeout=timeout, return_when="FIRST_COMPLETED"
        )
        if getter in done:
            return getter.result()
        getter.cancel()
        if self._task in done:
            self._task.result()  # raises what ended the stream
            raise AssertionError("the stream ended")
        raise TimeoutError

    def cancel(self) -> None:
        self.call.cancel()
        self._task.cancel()


async def collect(call: Any, count: int, timeout: float = 15.0) -> list[Any]:
    """The next `count` messages of a server stream (read() style, so callers may read first)."""
    received: list[Any] = []
    async with asyncio.timeout(timeout):
        while len(received) < count:
            message = await call.read()
            done = message is aio.EOF  # type: ignore[attr-defined]
            assert not done, f"stream ended after {len(received)} messages"
            received.append(message)
    return received


def grpc_web_frame(message: bytes) -> bytes:
    """One gRPC-Web data frame: flag 0, big-endian length, the message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def grpc_web_frames(body: bytes) -> Iterable[tuple[int, bytes]]:
    """Splits a gRPC-Web body into (flag, payload) frames; flag 0x80 marks the trailers."""
    offset = 0
    while offset + 5 <= len(body):
        flag = body[offset]
        (length,) = struct.unpack(">I", body[offset + 1 : offset + 5])
        if offset + 5 + length > len(body):
            return
        yield flag, body[offset + 5 : offset + 5 + length]
        offset += 5 + length


def complete_frames_length(body: bytes) -> int:
    """How many leading bytes of `body` are whole frames."""
    offset = 0
    while offset + 5 <= len(body):
        (length,) = struct.unpack(">I", body[offset + 1 : offset + 5])
        if offset + 5 + length > len(body):
            break
        offset += 5 + length
    return offset


async def read_to_end(call: Any, timeout: float = 15.0) -> list[Any]:
    """Every remaining message of a server stream, until it ends (read() style)."""
    received: list[Any] = []
    async with asyncio.timeout(timeout):
        while (message := await call.read()) is not aio.EOF:  # type: ignore[attr-defined]
            received.append(message)
    return received
