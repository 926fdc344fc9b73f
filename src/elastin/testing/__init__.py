"""Public fakes for tests of code built on Elastin: ``MemoryStore`` (the state store in
memory), ``FakeDriver`` (a controllable driver), ``FakeProxy`` (a node's proxy, for the
mesh manager) and ``FakeClock``."""

from __future__ import annotations

from elastin.store.memory import MemoryStore
from elastin.testing.clock import FakeClock
from elastin.testing.fake_driver import FakeDriver, FakeInstance
from elastin.testing.fake_proxy import FakeProxy

__all__ = ["FakeClock", "FakeDriver", "FakeInstance", "FakeProxy", "MemoryStore"]
