"""The fake driver passes the same conformance suite as the real ones."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from elastin.agent.drivers.base import Driver, InstanceConfig
from elastin.model.resources import Resources
from elastin.testing.driver_conformance import CHECKS, Behaviour, DriverKit
from elastin.testing.fake_driver import FakeDriver

COMMANDS: dict[str, tuple[str, ...]] = {
    "exit0": ("exit", "0"),
    "exit3": ("exit", "3"),
    "forever": ("sleep", "forever"),
    "ignore_term": ("ignore-term",),
    "missing": ("missing",),
}


class FakeKit:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fake = FakeDriver()
        self.driver: Driver = self.fake

    def config(self, alloc_id: str, behaviour: Behaviour) -> InstanceConfig:
        return InstanceConfig(
            alloc_id,
            alloc_id,
            COMMANDS[behaviour],
            {},
            "",
            Resources(100, 64 << 20, 0),
            str(self.tmp / alloc_id),
        )

    def restarted(self) -> Driver:
        return self.fake.restarted()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_fake_driver_conformance(
    check: Callable[[DriverKit], Awaitable[None]], tmp_path: Path
) -> None:
    await check(FakeKit(tmp_path))
