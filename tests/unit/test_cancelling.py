"""A retry loop ends when cancelled even if the cancellation reaches it as another error, as
redis-py can report a cancelled blocking read as a TimeoutError."""

from __future__ import annotations

import asyncio

import pytest

from services.server.failures import cancel_and_wait, raise_if_cancelling

pytestmark = pytest.mark.asyncio


async def _read_like_redis_py(started: asyncio.Event) -> None:
    """Blocks until cancelled, then reports the cancellation as a TimeoutError."""
    started.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        raise TimeoutError("Timeout reading from 127.0.0.1:6379") from None


async def _retrying(started: asyncio.Event, attempts: list[int], check: bool) -> None:
    while len(attempts) < 2:  # bounded, so the unchecked loop of the second test ends too
        attempts.append(1)
        try:
            await _read_like_redis_py(started)
        except OSError as exc:  # TimeoutError is an OSError
            if check:
                raise_if_cancelling(exc)
            await asyncio.sleep(0.01)


async def test_a_cancelled_retry_loop_ends() -> None:
    started, attempts = asyncio.Event(), list[int]()
    task = asyncio.create_task(_retrying(started, attempts, check=True))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert len(attempts) == 1


async def test_without_the_check_the_loop_outlives_its_cancellation() -> None:
    started, attempts = asyncio.Event(), list[int]()
    task = asyncio.create_task(_retrying(started, attempts, check=False))
    await started.wait()
    started.clear()
    task.cancel()
    await asyncio.wait_for(started.wait(), 5)  # it went round again instead of ending
    assert not task.done()
    assert len(attempts) == 2
    task.cancel()
    await asyncio.wait_for(task, 5)  # swallowed again: the loop ends only by its bound
    assert len(attempts) == 2


async def test_in_a_task_not_being_cancelled_nothing_is_raised() -> None:
    raise_if_cancelling(OSError("connection reset"))


async def test_cancel_and_wait_ends_a_task_that_swallowed_its_first_cancel() -> None:
    """As a blocking read whose own timeout fired with the cancel does (Python 3.11): the loop
    sees a TimeoutError, not a cancellation, and would retry forever after one cancel."""
    swallowed = 0
    rounds = 0

    async def retrying_loop() -> None:
        nonlocal swallowed, rounds
        while True:
            rounds += 1
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1
                current = asyncio.current_task()
                assert current is not None
                current.uncancel()  # what the timeout's exit did with the cancel

    task = asyncio.create_task(retrying_loop())
    await asyncio.sleep(0.01)
    async with asyncio.timeout(5):
        await cancel_and_wait([task])
    assert task.cancelled()
    assert swallowed == 1
    assert rounds >= 2  # it did go on after the first cancel
