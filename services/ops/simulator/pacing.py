"""A shared pace for opening streams, so a thousand drivers do not all connect in one instant."""

from __future__ import annotations

import asyncio
import time


class Pacer:
    """Lets at most `rate_per_s` callers through per second, in arrival order."""

    def __init__(self, rate_per_s: float) -> None:
        self._interval = 1.0 / rate_per_s
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self._interval
        if delay > 0:
            await asyncio.sleep(delay)
