"""Replay pacing: when each stored fix is due on a sped-up clock, and the ticks in between.

Pure apart from the clock and the sleep it is given, so tests drive it with a fake clock.
- The replay clock reads start + elapsed wall time × speed, on a monotonic clock.
- A fix is played when the clock has reached its recorded time, never earlier, in the order the
  source gives (every fix once).
- When no message has gone out for `tick_every_s` of wall time, a tick (the clock alone) goes
  out, so a time slider keeps moving across quiet spans.
- A consumer that reads slowly only delays what comes next: the clock runs on, due fixes are
  then played back to back, and none is skipped.
- After the last fix the clock runs on to the end of the range; a final tick at the end says
  the replay is over.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.history.store import FixRow

TICK_EVERY_S = 1.0
_MIN_SLEEP_S = 1e-6

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Played:
    """One message of a replay: a fix (None on a tick), the replay clock when it went out, and
    for a fix how many wall seconds after its due time that was."""

    fix: FixRow | None
    replay_time: datetime
    late_s: float = 0.0


class ReplayClock:
    """Replay time = start + (monotonic now - monotonic at creation) × speed."""

    def __init__(self, start: datetime, speed: float, monotonic: Callable[[], float]) -> None:
        self._start = start
        self._speed = speed
        self._monotonic = monotonic
        self._origin = monotonic()

    def elapsed_s(self) -> float:
        """Wall seconds since the replay started."""
        return self._monotonic() - self._origin

    def now(self) -> datetime:
        """The recorded time being played now."""
        return self._start + timedelta(seconds=self.elapsed_s() * self._speed)

    def wall_until(self, moment: datetime) -> float:
        """Wall seconds until the clock reaches `moment`; zero or less once it has."""
        return (moment - self._start).total_seconds() / self._speed - self.elapsed_s()


class Pacer:
    """Turns fixes in time order into paced messages with ticks between them."""

    def __init__(
        self, clock: ReplayClock, end: datetime, sleep: Sleep, tick_every_s: float = TICK_EVERY_S
    ) -> None:
        self._clock = clock
        self._end = end
        self._sleep = sleep
        self._tick_every_s = tick_every_s
        self._last_sent_s = -math.inf
        self._last_time: datetime | None = None

    async def play(self, pages: AsyncIterator[Iterable[FixRow]]) -> AsyncIterator[Played]:
        """Every fix of `pages` when due, ticks while none is, then the final tick at the end."""
        async for page in pages:
            for fix in page:
                async for tick in self._wait_for(fix.recorded_at):
                    yield tick
                late_s = max(0.0, -self._clock.wall_until(fix.recorded_at))
                yield self._sent(fix, fix.recorded_at, late_s)
        async for tick in self._wait_for(self._end):
            yield tick
        yield self._sent(None, self._end)

    async def _wait_for(self, moment: datetime) -> AsyncIterator[Played]:
        """Ticks (about one per `tick_every_s`) until the clock reaches `moment`."""
        while (wait_s := self._clock.wall_until(moment)) > 0:
            tick_in_s = self._last_sent_s + self._tick_every_s - self._clock.elapsed_s()
            if tick_in_s <= 0:
                yield self._sent(None, self._clock.now())
            else:
                # At least a microsecond: a rounding remainder must not spin the loop.
                await self._sleep(max(_MIN_SLEEP_S, min(wait_s, tick_in_s)))

    def _sent(self, fix: FixRow | None, at_least: datetime, late_s: float = 0.0) -> Played:
        # The clock reads whole microseconds, so it may round a hair below a fix that is due;
        # replay_time never goes below a fix played, backwards, or past the end of the range.
        replay_time = min(max(self._clock.now(), at_least), self._end)
        if self._last_time is not None:
            replay_time = max(replay_time, self._last_time)
        self._last_time = replay_time
        self._last_sent_s = self._clock.elapsed_s()
        return Played(fix, replay_time, late_s)
