"""The ``Driver`` protocol every workload driver implements (task, container, vm, fake).

The agent's runner owns the allocation lifecycle and restart policy; a driver only knows how
to start one instance, wait for it, stop it, measure it, and find it again after the agent
restarts. A ``Handle`` is everything needed to re-attach: it is plain data the runner keeps on
disk, so a new agent process can ``recover`` instances an old one started.

Exceptions::

    DriverError            root; its message is shown to the user as the allocation's reason
     ├── StartError        the instance could not be started (e.g. the OS error of exec)
     └── ResizeError       a running instance's limits could not be changed in place
          ├── ResizeRefused      the new limits would harm it (memory below what it uses)
          └── ResizeUnsupported  this driver cannot resize in place (the instance must move)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from elastin.model.cluster import Usage
from elastin.model.resources import Resources


class DriverError(Exception):
    """Root of the drivers' exceptions."""


class StartError(DriverError):
    """An instance could not be started; the message carries the OS error."""


class ResizeError(DriverError):
    """A running instance's cpu or memory limit could not be changed in place."""


class ResizeRefused(ResizeError):
    """The new limits would harm the instance (a memory limit below what it uses now)."""


class ResizeUnsupported(ResizeError):
    """The driver cannot change a running instance's limits: it must be restarted (moved)."""


@dataclass(frozen=True)
class InstanceConfig:
    """What the runner asks a driver to start: one instance of a workload."""

    alloc_id: str
    name: str  # human name, "app.workload[index]"
    command: tuple[str, ...]
    env: dict[str, str]
    workdir: str  # "" = the allocation directory
    resources: Resources
    alloc_dir: str  # a directory owned by this instance (logs/, local/, status files)
    pids_limit: int = 0  # 0 = driver default
    image: str = ""  # containers and VMs
    log_max_bytes: int = 10 * 1024 * 1024  # rotate stdout/stderr when bigger
    log_max_files: int = 3  # rotated files kept per stream
    user: str = ""  # the spec's user: "" = a dynamic user of its own, "root", a name, "uid[:gid]"
    bind_low_ports: bool = False  # it listens on a port below 1024 (CAP_NET_BIND_SERVICE only)


@dataclass(frozen=True)
class Handle:
    """Plain, JSON-serialisable data to find an instance again after an agent restart."""

    alloc_id: str
    driver: str
    pid: int  # the program's own (what `ps` shows, what a signal should reach)
    started_at: float
    data: dict[str, Any] = field(default_factory=dict)  # driver-specific (cgroup paths, ...)


@dataclass(frozen=True)
class ExitResult:
    """How an instance ended."""

    exit_code: int | None  # None when killed by a signal
    signal: int | None = None
    oom_killed: bool = False
    error: str = ""  # a driver-level explanation, if any

    @property
    def success(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        if self.oom_killed:
            return "killed by the kernel: out of memory (the memory limit was reached)"
        if self.error:
            return self.error
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exited with code {self.exit_code}"


@dataclass(frozen=True)
class DriverInfo:
    """What fingerprinting found: whether the driver works here and facts about it."""

    name: str
    available: bool
    reason: str = ""  # why not available
    attributes: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Driver(Protocol):
    name: str

    def fingerprint(self) -> DriverInfo: ...

    async def start(self, config: InstanceConfig) -> Handle:
        """Start the instance inside its resource limits. Raises ``StartError``."""
        ...

    async def wait(self, handle: Handle) -> ExitResult:
        """Wait until the instance exits (also for a recovered instance)."""
        ...

    async def stop(self, handle: Handle, grace: float) -> None:
        """SIGTERM (or the driver's equivalent), then SIGKILL after ``grace`` seconds."""
        ...

    async def recover(self, handle: Handle) -> bool:
        """Re-attach after an agent restart; True when the instance is still running."""
        ...

    async def stats(self, handle: Handle) -> Usage:
        """Measured cpu (millicores, averaged since the previous call) and memory."""
        ...

    async def cleanup(self, handle: Handle) -> None:
        """Release what the instance held (cgroups, ...); called after it exited."""
        ...

    async def exec_in(self, handle: Handle, command: tuple[str, ...], env: dict[str, str]) -> int:
        """Run ``command`` inside the running instance (its limits, user, filesystem view and
        workdir) with ``env``; its exit status. Cancelling it kills what it started."""
        ...

    async def resize(self, handle: Handle, resources: Resources) -> Resources:
        """Change the running instance's cpu and memory limits in place (same pid, no
        restart); the limits now in force. ``ResizeRefused`` when they would harm it,
        ``ResizeUnsupported`` when this driver cannot (containers and VMs: not yet)."""
        ...


@dataclass(frozen=True)
class ExecOutput:
    """Bytes a command run inside an instance wrote (``elastin exec``)."""

    stream: str  # "stdout" | "stderr"
    data: bytes


@dataclass(frozen=True)
class ExecEnd:
    """How a command run inside an instance ended: its exit code, or the signal that
    killed it, or it ran past its time (then it was killed)."""

    exit_code: int | None
    signal: int | None = None
    timed_out: bool = False


@runtime_checkable
class Execs(Protocol):
    """A driver that runs a command inside a running instance and streams its output (the
    task driver; ``elastin exec`` through the agent's API)."""

    async def exec_start(
        self, handle: Handle, command: tuple[str, ...], env: dict[str, str]
    ) -> asyncio.subprocess.Process:
        """Start ``command`` as ``exec_in`` does, its stdout and stderr on pipes; raises
        ``StartError`` when the instance is not running."""
        ...

    def exec_output(
        self, proc: asyncio.subprocess.Process, timeout: float
    ) -> AsyncGenerator[ExecOutput | ExecEnd, None]:
        """What the started command writes, then (last) how it ended; killed after
        ``timeout`` s. Closing the iterator early kills what it started."""
        ...


def proc_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def supervisor_pid(handle: Handle) -> int:
    """The pid of the instance's supervisor: ``shim_pid`` in its data when the driver keeps
    one (the task driver: ``pid`` is then the program's own), else ``pid``."""
    return int(handle.data.get("shim_pid", handle.pid))


def supervisor_alive(handle: Handle) -> bool:
    """Whether an instance's supervisor (``supervisor_pid``) still runs: its pid exists and
    started when the handle says (``start_ticks``: a reused pid is not it)."""
    ticks = proc_start_ticks(supervisor_pid(handle))
    want = int(handle.data.get("start_ticks", 0))
    return ticks is not None and (not want or ticks == want)
