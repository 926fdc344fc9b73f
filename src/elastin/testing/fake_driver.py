"""``FakeDriver``: an in-memory ``Driver`` for tests of the agent's logic.

Instances "run" until the test ends them: ``exit(alloc_id, code)``, ``oom(alloc_id)``, or a
``stop``. A few commands behave on their own, for the conformance suite: ``exit N`` ends at
once with code N, ``ignore-term`` needs SIGKILL to stop, ``missing`` (or anything in
``fail_commands``) fails to start like a missing executable. ``restarted()`` gives a new
driver sharing the same instances, as a restarted agent would find them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field, replace

from elastin.agent.drivers.base import (
    DriverInfo,
    ExitResult,
    Handle,
    InstanceConfig,
    ResizeError,
    StartError,
)
from elastin.model.cluster import Usage
from elastin.model.resources import Resources


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
        self.fail_commands: set[str] = {"missing"}
        self.ignore_term = False
        self.execs: list[tuple[str, tuple[str, ...]]] = []  # exec_in calls: (alloc, command)
        self.resizes: list[tuple[str, Resources]] = []  # resize calls: (alloc, new limits)
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
        if len(config.command) == 2 and config.command[0] == "exit":
            self.exit(config.alloc_id, int(config.command[1]))
        return Handle(config.alloc_id, self.name, inst.pid, time.time(), {})

    def restarted(self) -> FakeDriver:
        """A new driver object over the same instances (an agent restart)."""
        other = FakeDriver(self.name, available=self.available)
        other.instances = self.instances
        other.fail_commands = self.fail_commands
        other._pids = self._pids
        return other

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
        stubborn = self.ignore_term or inst.config.command[:1] == ("ignore-term",)
        self._finish(handle.alloc_id, ExitResult(None, 9 if stubborn else 15))

    async def recover(self, handle: Handle) -> bool:
        return self.running(handle.alloc_id)

    async def stats(self, handle: Handle) -> Usage:
        inst = self.instances[handle.alloc_id]
        if inst.result is not None:
            return Usage(sampled_at=time.time())
        return Usage(
            cpu=inst.config.resources.cpu / 2,
            memory=inst.config.resources.memory // 2,
            sampled_at=time.time(),
        )

    async def cleanup(self, handle: Handle) -> None:
        return None

    async def resize(self, handle: Handle, resources: Resources) -> Resources:
        """New limits for a running instance (kept in its config, so ``stats`` follows)."""
        inst = self.instances[handle.alloc_id]
        if inst.result is not None:
            raise ResizeError("the instance is not running")
        inst.config = replace(inst.config, resources=resources)
        self.resizes.append((handle.alloc_id, resources))
        return resources

    async def exec_in(self, handle: Handle, command: tuple[str, ...], env: dict[str, str]) -> int:
        """A check command inside the instance: ``true`` passes, anything else fails."""
        self.execs.append((handle.alloc_id, command))
        return 0 if command[:1] == ("true",) and self.running(handle.alloc_id) else 1


async def exec_here(command: tuple[str, ...]) -> int:
    """An exec check's command as a plain child of the test (no instance around it); the
    ``exec_in`` of ``elastin.agent.health.probe``. Cancelling it kills the command."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        return await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
