"""The one clock of the server and the agent: wall time, monotonic time and sleeping.

Every piece of server and agent logic that reads the time or waits takes a ``Clock`` (this
module's ``SYSTEM`` by default), so that tests drive time with ``elastin.testing.FakeClock``
instead of real sleeps. Nothing outside this module calls ``time.time()``,
``time.monotonic()`` or ``asyncio.sleep()`` in the server or the agent.

``time()`` is for timestamps that are stored or shown (seconds since the epoch);
``monotonic()`` for intervals and deadlines; ``sleep()`` waits (a fake clock waits until it is
advanced). ``yield_now()`` gives other tasks a turn without involving time at all.
"""

from __future__ import annotations

import asyncio
import time as _time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (timestamps that are stored or shown)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals and deadlines)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM: Clock = SystemClock()


async def yield_now() -> None:
    """Let every other ready task run once (not a wait: no time passes)."""
    await asyncio.sleep(0)
