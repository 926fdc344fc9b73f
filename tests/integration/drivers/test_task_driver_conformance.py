"""The task driver, for real (processes in cgroups on this machine), passes the suite."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from elastin.agent.drivers.base import Driver, InstanceConfig
from elastin.agent.drivers.cgroups import destroy_root
from elastin.agent.drivers.task import TaskDriver
from elastin.model.resources import Resources
from elastin.testing.driver_conformance import CHECKS, Behaviour, DriverKit

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

PY = sys.executable
COMMANDS: dict[str, tuple[str, ...]] = {
    "exit0": ("sh", "-c", "exit 0"),
    "exit3": ("sh", "-c", "exit 3"),
    "forever": (PY, "-c", "import time; time.sleep(600)"),
    "ignore_term": (
        PY,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
    ),
    "missing": ("definitely-not-a-program-here",),
}


class TaskKit:
    def __init__(self, tmp: Path, root: str) -> None:
        self.tmp = tmp
        self.root = root
        self.driver: Driver = TaskDriver(root)

    def config(self, alloc_id: str, behaviour: Behaviour) -> InstanceConfig:
        return InstanceConfig(
            alloc_id,
            alloc_id,
            COMMANDS[behaviour],
            {"PATH": os.environ["PATH"]},
            "",
            Resources(200, 64 << 20, 0),
            str(self.tmp / alloc_id),
        )

    def restarted(self) -> Driver:
        return TaskDriver(self.root)


@pytest.fixture
def cgroup_root() -> Iterator[str]:
    root = f"elastin-test-{secrets.token_hex(4)}"
    yield root
    destroy_root(root)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_task_driver_conformance(
    check: Callable[[DriverKit], Awaitable[None]], tmp_path: Path, cgroup_root: str
) -> None:
    await check(TaskKit(tmp_path, cgroup_root))
