"""The ack ticker visits streams a slice at a time: each stream with news is acked once per
interval, and never all of them in one burst."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import asyncpg

from services.domain.validation import FixLimits
from services.live.ingest import StreamId
from services.location.session import DriverSession, FixKey
from services.location.streams import DriverStream, StreamRegistry
from services.location.throttle import TokenBucket


class Watermark:
    """Stands in for LiveStore's one call the ticker makes: everything below is committed."""

    def __init__(self) -> None:
        self.reads = 0

    async def watermarks(self, partitions: Iterable[int]) -> dict[int, StreamId | None]:
        self.reads += 1
        return dict.fromkeys(partitions, (2**62, 0))


class History:
    """Stands in for PostgreSQL: every fix asked about is stored."""

    async def stored_keys(self, keys: Sequence[FixKey]) -> set[FixKey]:
        return set(keys)


AT = datetime(2027, 1, 1, tzinfo=UTC)


def _streams(count: int) -> list[DriverStream]:
    made = []
    for n in range(count):
        stream = DriverStream(DriverSession(FixLimits(), TokenBucket(1.0, 1)))
        stream.session.accepted(1, (1_000 + n, 0), (f"d{n}", AT, 1), 0.0)
        made.append(stream)
    return made


def _acked(stream: DriverStream) -> bool:
    return any(m.WhichOneof("kind") == "ack" for m in stream.outgoing())


async def test_one_interval_acks_every_stream_once_a_slice_at_a_time() -> None:
    watermark = Watermark()
    registry = StreamRegistry(watermark, History(), interval_s=0.2, slices=10)
    streams = _streams(40)
    for stream in streams:
        registry.add(stream)
    ticker = asyncio.create_task(registry.run())
    try:
        await asyncio.sleep(0.2 * 0.1 * 1.5)  # one slice's step, and a bit
        first_slice = [s for s in streams if _acked(s)]
        await asyncio.sleep(0.2 * 1.2)  # the rest of the interval
        later = [s for s in streams if _acked(s)]
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)
    assert 1 <= len(first_slice) <= 8  # a slice (4 streams, maybe 2 slices), not all 40
    assert len(first_slice) + len(later) == 40  # everyone acked, exactly once
    assert all(s.session.durable_seq == 1 for s in streams)
    assert watermark.reads >= 10  # one read per slice


async def test_a_full_tick_and_discard_cover_every_slice() -> None:
    registry = StreamRegistry(Watermark(), History(), interval_s=1.0, slices=3)
    streams = _streams(7)
    for stream in streams:
        registry.add(stream)
    registry.discard(streams[0])
    registry.discard(streams[0])  # twice is harmless
    assert len(registry) == 6
    await registry.tick()
    assert [_acked(s) for s in streams] == [False] + [True] * 6


class CountingHistory(History):
    """PostgreSQL that counts how often it is asked."""

    def __init__(self) -> None:
        self.asked: list[FixKey] = []

    async def stored_keys(self, keys: Sequence[FixKey]) -> set[FixKey]:
        self.asked += keys
        return set(keys)


async def test_fixes_this_process_committed_are_settled_without_asking_postgresql() -> None:
    history = CountingHistory()
    streams = _streams(4)
    mine = {s.session.due((2**62, 0), 0.0, 120.0)[0] for s in streams[:3]}
    registry = StreamRegistry(Watermark(), history, interval_s=1.0, slices=1, committed_here=mine)
    for stream in streams:
        registry.add(stream)
    await registry.tick()
    assert [s.session.durable_seq for s in streams] == [1, 1, 1, 1]
    assert len(history.asked) == 1  # only the fix another persister committed


class AwayHistory(History):
    """PostgreSQL that is not there."""

    async def stored_keys(self, keys: Sequence[FixKey]) -> set[FixKey]:
        raise asyncpg.exceptions.CannotConnectNowError("the database system is starting up")


async def test_without_postgresqls_answer_nothing_is_settled_or_called_lost() -> None:
    streams = _streams(2)
    mine = {streams[0].session.due((2**62, 0), 0.0, 120.0)[0]}
    registry = StreamRegistry(
        Watermark(), AwayHistory(), interval_s=1.0, slices=1, committed_here=mine
    )
    for stream in streams:
        registry.add(stream)
    await registry.tick()
    assert [s.session.durable_seq for s in streams] == [0, 0]
    assert all(s.failure is None for s in streams)
