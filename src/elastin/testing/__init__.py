"""Public fakes for tests of code built on Elastin: ``MemoryStore`` (the state store in
memory), ``FakeDriver`` (a controllable driver) and ``FakeClock``."""

from __future__ import annotations

from elastin.store.memory import MemoryStore
from elastin.testing.fake_driver import FakeDriver, FakeInstance


class FakeClock:
    """A clock that moves only when told to: ``clock()`` reads it, ``advance(s)`` moves it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


__all__ = ["FakeClock", "FakeDriver", "FakeInstance", "MemoryStore"]
