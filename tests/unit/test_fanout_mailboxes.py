"""The conflating mailboxes behind watchers: `Latest` (one slot) and `KeyedLatest` (per key)."""

from __future__ import annotations

import asyncio
import contextlib

from services.live.mailboxes import KeyedLatest, Latest

# Long enough for a wrongly released batch to show up, short enough to keep the suite fast.
SETTLE_S = 0.05


class FakeClock:
    """A clock the test moves by hand; the mailbox reads it to decide what is due."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _pending(task: asyncio.Task[list[int]]) -> bool:
    await asyncio.sleep(SETTLE_S)
    return not task.done()


# --- Latest ----------------------------------------------------------------------------------


async def test_latest_hands_over_the_newest_item_and_counts_drops() -> None:
    box: Latest[int] = Latest()
    for item in (1, 2, 3):
        box.put(item)
    assert await box.get() == 3
    assert box.dropped == 2


async def test_latest_does_not_count_an_item_that_was_read_as_dropped() -> None:
    box: Latest[int] = Latest()
    box.put(1)
    assert await box.get() == 1
    box.put(2)
    assert await box.get() == 2
    assert box.dropped == 0


async def test_latest_keeps_falsy_items() -> None:
    box: Latest[int] = Latest()
    box.put(0)
    box.put(0)
    assert await box.get() == 0
    assert box.dropped == 1


async def test_latest_get_waits_for_a_put() -> None:
    box: Latest[str] = Latest()
    task = asyncio.create_task(box.get())
    await asyncio.sleep(SETTLE_S)
    assert not task.done()
    box.put("fix")
    assert await asyncio.wait_for(task, 1.0) == "fix"


async def test_latest_get_waits_again_once_emptied() -> None:
    box: Latest[str] = Latest()
    box.put("a")
    assert await box.get() == "a"
    task = asyncio.create_task(box.get())
    await asyncio.sleep(SETTLE_S)
    assert not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- KeyedLatest -----------------------------------------------------------------------------


async def test_keyed_latest_conflates_per_key() -> None:
    box: KeyedLatest[int] = KeyedLatest(1.0, FakeClock())
    box.put("a", 1)
    box.put("b", 10)
    box.put("a", 2)
    box.put("a", 3)
    assert sorted(await box.get_batch()) == [3, 10]
    assert box.dropped == 2


async def test_keyed_latest_releases_a_key_at_most_once_per_interval() -> None:
    clock = FakeClock()
    interval = 1 / 32  # exact in binary, so the clock lands on the boundary exactly
    box: KeyedLatest[int] = KeyedLatest(interval, clock)
    box.put("a", 1)
    assert await box.get_batch() == [1]

    box.put("a", 2)
    task = asyncio.create_task(box.get_batch())
    # Real time passes, but the mailbox's clock has not moved: "a" is not due yet.
    assert await _pending(task)
    clock.now += interval / 2
    assert await _pending(task)
    clock.now += interval / 2
    assert await asyncio.wait_for(task, 1.0) == [2]


async def test_keyed_latest_releases_other_keys_while_one_waits() -> None:
    clock = FakeClock()
    box: KeyedLatest[int] = KeyedLatest(10.0, clock)
    box.put("a", 1)
    assert await box.get_batch() == [1]
    box.put("a", 2)
    box.put("b", 20)
    assert await box.get_batch() == [20]
    clock.now += 10.0
    assert await box.get_batch() == [2]


async def test_keyed_latest_conflates_while_a_key_is_held_back() -> None:
    clock = FakeClock()
    box: KeyedLatest[int] = KeyedLatest(10.0, clock)
    box.put("a", 1)
    assert await box.get_batch() == [1]
    for item in (2, 3, 4):
        box.put("a", item)
    clock.now += 10.0
    assert await box.get_batch() == [4]
    assert box.dropped == 2


async def test_keyed_latest_waits_when_empty() -> None:
    box: KeyedLatest[int] = KeyedLatest(0.0, FakeClock())
    task = asyncio.create_task(box.get_batch())
    assert await _pending(task)
    box.put("a", 1)
    assert await asyncio.wait_for(task, 1.0) == [1]


async def test_put_if_absent_adds_when_nothing_is_pending() -> None:
    box: KeyedLatest[str] = KeyedLatest(1.0, FakeClock())
    box.put_if_absent("a", "snapshot")
    assert await box.get_batch() == ["snapshot"]


async def test_put_if_absent_does_not_overwrite_a_newer_pending_item() -> None:
    box: KeyedLatest[str] = KeyedLatest(1.0, FakeClock())
    box.put("a", "live fix")
    box.put_if_absent("a", "older snapshot")
    assert await box.get_batch() == ["live fix"]
    assert box.dropped == 0


async def test_last_sent_memory_stays_bounded_over_many_keys() -> None:
    clock = FakeClock()
    box: KeyedLatest[int] = KeyedLatest(1.0, clock)
    for i in range(5000):
        box.put(f"driver-{i}", i)
        assert await box.get_batch() == [i]
        clock.now += 0.01
    # At most one interval's worth of keys (100) may still be remembered, plus the slack of 64.
    assert len(box._last_sent) <= 100 + 64 + 1


async def test_a_forgotten_key_may_send_at_once_again() -> None:
    clock = FakeClock()
    box: KeyedLatest[int] = KeyedLatest(1.0, clock)
    for i in range(200):
        box.put(f"k{i}", i)
        await box.get_batch()
        clock.now += 2.0
    box.put("k0", -1)
    assert await asyncio.wait_for(box.get_batch(), 1.0) == [-1]


async def test_latest_with_depth_keeps_the_newest_items_in_order() -> None:
    box: Latest[int] = Latest(depth=3)
    for item in range(1, 6):
        box.put(item)
    assert [await box.get() for _ in range(3)] == [3, 4, 5]
    assert box.dropped == 2
    waiting = asyncio.create_task(box.get())
    await asyncio.sleep(SETTLE_S)
    assert not waiting.done(), "an emptied mailbox waits for the next put"
    box.put(6)
    assert await waiting == 6
