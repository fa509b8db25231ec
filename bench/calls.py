"""Timed unary calls: a bounded list of labelled jobs at a small concurrency, with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from grpc import aio

# One job: a label to group its latency under, and a coroutine factory making the call(s).
Job = tuple[str, Callable[[], Awaitable[object]]]


@dataclass
class Timings:
    """Milliseconds per label for the jobs that succeeded; failures counted by label and code."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    skipped: int = 0  # jobs never started because the deadline passed
    seconds: float = 0.0

    @property
    def all_ms(self) -> list[float]:
        return [value for values in self.ms.values() for value in values]


async def run_timed(jobs: Sequence[Job], concurrency: int, max_seconds: float) -> Timings:
    """Runs `jobs` in order, `concurrency` at a time; no job starts after `max_seconds`."""
    timings = Timings()
    pending: Iterator[Job] = iter(jobs)  # shared by the workers: next() cannot interleave
    stop_at = time.monotonic() + max_seconds

    async def work() -> None:
        for label, call in pending:
            if time.monotonic() > stop_at:
                timings.skipped += 1
                continue
            start = time.perf_counter()
            try:
                await call()
            except aio.AioRpcError as error:
                timings.errors[f"{label}: {error.code().name}"] += 1
                continue
            timings.ms.setdefault(label, []).append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(work() for _ in range(concurrency)))
    timings.seconds = time.perf_counter() - start
    return timings
