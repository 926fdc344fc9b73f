"""``FakeDriver``: an in-memory ``Driver`` for tests of the agent's logic.

Instances "run" until the test ends them: ``exit(alloc_id, code)``, ``oom(alloc_id)``, or a
``stop``. ``fail_commands`` makes ``start`` fail like a missing executable. Handles survive a
"restart" when the same ``FakeDriver`` (its ``world``) is handed to a new agent.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from elastin.agent.drivers.base import DriverInfo, ExitResult, Handle, InstanceConfig, StartError
from elastin.model.cluster import Usage


@dataclass
class FakeInstance:
    config: InstanceConfig
    pid: int
    result: ExitResult | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stop_grace: float | None = None


class FakeDriver:
    name = "task"

    def __init__(self, name: str = "task", *, available: bool = True) -> None:
        self.name = name
        self.available = available
        self.instances: dict[str, FakeInstance] = {}
        self.started: list[InstanceConfig] = []
        self.fail_commands: set[str] = set()
        self.ignore_term = False
        self._pids = itertools.count(10_000)

    def fingerprint(self) -> DriverInfo:
        return DriverInfo(
            self.name,
            self.available,
            "" if self.available else "disabled",
            {"cgroup.version": "fake"},
        )

    async def start(self, config: InstanceConfig) -> Handle:
        if config.command and config.command[0] in self.fail_commands:
            raise StartError(
                f"cannot start {config.command[0]!r}: No such file or directory (errno 2)"
            )
        inst = FakeInstance(config, next(self._pids))
        self.instances[config.alloc_id] = inst
        self.started.append(config)
        return Handle(config.alloc_id, self.name, inst.pid, time.time(), {})

    def exit(self, alloc_id: str, code: int) -> None:
        self._finish(alloc_id, ExitResult(code))

    def oom(self, alloc_id: str) -> None:
        self._finish(alloc_id, ExitResult(None, 9, True))

    def _finish(self, alloc_id: str, result: ExitResult) -> None:
        inst = self.instances[alloc_id]
        if inst.result is None:
            inst.result = result
            inst.exited.set()

    def running(self, alloc_id: str) -> bool:
        inst = self.instances.get(alloc_id)
        return inst is not None and inst.result is None

    async def wait(self, handle: Handle) -> ExitResult:
        inst = self.instances[handle.alloc_id]
        await inst.exited.wait()
        assert inst.result is not None
        return inst.result

    async def stop(self, handle: Handle, grace: float) -> None:
        inst = self.instances[handle.alloc_id]
        inst.stop_grace = grace
        self._finish(handle.alloc_id, ExitResult(None, 9 if self.ignore_term else 15))

    async def recover(self, handle: Handle) -> bool:
        return self.running(handle.alloc_id)

    async def stats(self, handle: Handle) -> Usage:
        inst = self.instances[handle.alloc_id]
        return Usage(
            cpu=inst.config.resources.cpu / 2,
            memory=inst.config.resources.memory // 2,
            sampled_at=time.time(),
        )

    async def cleanup(self, handle: Handle) -> None:
        return None
