"""``FakeClock``: a ``elastin.clock.Clock`` that moves only when told to.

``advance(s)`` moves it and wakes every ``sleep`` whose deadline passed; with
``autojump=True`` a ``sleep`` moves the clock itself to its own deadline (for code that only
backs off, where a test wants no waiting at all). Calling the clock (``clock()``) reads it,
so it also serves where a plain ``Callable[[], float]`` is asked for.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class FakeClock:
    def __init__(self, start: float = 1_000_000.0, *, autojump: bool = False) -> None:
        self.now = start
        self.autojump = autojump
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        deadline = self.now + max(seconds, 0.0)
        if self.autojump:
            self.now = max(self.now, deadline)
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        self._wake()
        await fut

    @property
    def sleepers(self) -> int:
        """Sleeps waiting for the clock to move (cancelled ones not counted)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._wake()

    def _wake(self) -> None:
        while self._sleepers and (self._sleepers[0][0] <= self.now or self._sleepers[0][2].done()):
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
