"""``AllocRunner``: the life of one allocation on this node.

It waits for the workload's dependencies, starts the instance through its driver, watches it,
runs its health check, restarts it under the restart policy with exponential backoff, stops it
gracefully when asked, and reports every step to the server through a ``Reporter``.

Before it starts an instance it makes sure the instance can work from its first instruction:

* its ports come from the node's ``PortAllocator`` (``agent/ports.py``), reserved until the
  allocation ends, so no two instances or listeners get the same port; its fixed ports are
  kept from the others' dynamic ones from the moment the runner exists (``want``), also while
  it waits for the instance it replaces to let them go;
* a fixed port already held by another process fails the start at once (``failed``, no
  restart loop) with the port and who holds it (pid and command); one held by another of this
  node's allocations (a replaced instance still stopping) is waited for, bounded;
* its upstream listeners accept connections on the node's proxy (``upstreams_down``): the
  runner reports the ports (so the server puts the listeners in the node's mesh snapshot) and
  waits, ``starting`` with a reason naming the upstream and port, at most ``UPSTREAM_WAIT``
  seconds, after which it starts anyway with a warning event;
* a job's retry (``Allocation.attempt`` > 0) waits ``Workload.retry_wait(attempt)`` first,
  ``starting`` with the reason "retry 2 of 3 in 2s (after: exited with code 1)".

Its status is the allocation's (``AllocStatus``) and every move is checked against the
allocation's table (``elastin.model.cluster.check_transition``): an illegal one raises
``IllegalTransition`` (a bug in the runner, reported as the allocation's failure). A restart
backoff is shown as ``starting`` with the reason "restarting in 4s: exited with code 1" (cleared
when the instance runs again)::

    pending ──(deps ready)──► starting ──► running ──(exit)──┬─► restart? ──(backoff)──► starting
       │                          │                         ├─► complete  (exit 0, no restart)
       │                          └─(start error)──► failed  ├─► failed    (policy says stop)
       └──────────(stop asked)────────────────────────────► stopped

A re-attached instance (``run(recovered=handle)``) starts from ``running``: the previous
agent process started it. Whether and when to restart is decided by the pure
``elastin.agent.restart.decide``; the runner applies the decision. Time comes from the
injected ``Clock`` (``elastin.clock.SYSTEM`` by default).

The handle of a started instance is kept on disk (``<state_dir>/<alloc>.json``) so that a new
agent process re-attaches to it (``recover``) instead of starting it again. Writing it is
retried (``SAVE_RETRIES``); when it still fails (a full disk) the instance is stopped and the
allocation fails with the reason: an instance no agent could find again is never left
running. Likewise when the runner itself fails unexpectedly: its instance is stopped and the
allocation is reported failed with no pid (never ``running`` with a pid that is gone).

A resize (the server changed the allocation's ``resources`` in place: ``elastin recommend``'s
auto mode, ``POST /v1/allocations/{id}/resize``) reaches the runner through the agent's
allocation watch (``resized`` picks them, ``AllocRunner.resize`` applies one): a running
instance gets its new cpu and memory limits live from its driver (same pid), and every later
start (a restart after an OOM kill) uses the allocation's resources, not the spec's. One that
comes while the instance starts is applied once it runs. One the driver refuses is reported
(``resize_refused``: the server puts the allocation's resources back to what the instance runs
with).

Jobs do not restart in place: a failed run is reported ``failed`` and the scheduler places a
new attempt while the job's ``retries`` allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from elastin.agent.drivers.base import (
    Driver,
    DriverError,
    ExitResult,
    Handle,
    InstanceConfig,
    StartError,
)
from elastin.agent.health import HealthState, probe
from elastin.agent.ports import Holder, NoFreePort, PortAllocator, taken_by
from elastin.agent.restart import Finish, GiveUp, decide
from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import TERMINAL, Allocation, AllocStatus, Usage, check_transition
from elastin.model.codec import from_data, to_data
from elastin.model.resources import Resources, describe_resize
from elastin.model.units import format_cpu, format_size
from elastin.model.workload import Workload

log = logging.getLogger("elastin.agent")

Report = Callable[..., None]
DepsReady = Callable[[Allocation, Workload], Awaitable[str]]  # "" when ready, else why not
# take an instance out of every proxy before it is stopped (the mesh version that stopped
# it, its stop_grace); returns what happened (an event)
Drain = Callable[[Allocation, int, float], Awaitable[str]]
SAVE_RETRIES = (0.2, 0.5, 1.0, 2.0)  # seconds between tries to save a handle
# the upstream listeners of an instance that are not up yet on the node's proxy, each as
# "api (127.0.0.1:21234)"; empty when all are (or the node has no proxy)
UpstreamsDown = Callable[[Allocation, Workload, Mapping[str, int]], Awaitable[list[str]]]
# why the previous run of a job failed ("exited with code 1"; "" when unknown)
PreviousFailure = Callable[[Allocation], Awaitable[str]]
UPSTREAM_WAIT = 60.0  # seconds an instance waits for its upstream listeners, at most
UPSTREAM_POLL = 0.1  # seconds between two looks at them
PORT_WAIT = 30.0  # seconds a fixed port held by an Elastin instance (stopping) is waited for
PORT_POLL = 0.5  # seconds between two looks at it
UPSTREAM_PREFIX = "upstream."  # an upstream listener's port in ``ports`` (mesh/model/build.py)


@dataclass
class RunnerState:
    """What a runner knows; also what the agent shows for this allocation."""

    status: AllocStatus = "pending"
    restarts: int = 0
    pid: int = 0
    healthy: bool | None = None
    usage: Usage = field(default_factory=Usage)


def resized(
    allocs: Sequence[Allocation], current: Mapping[str, Resources]
) -> list[tuple[str, Resources]]:
    """The allocations the server resized in place: ``(allocation id, new resources)`` for
    each one that should run, has a runner (``current``: its resources now) and whose
    cpu or memory differs from it (pure; ``Agent.sync`` applies them)."""
    out = []
    for a in allocs:
        have = current.get(a.id)
        if have is None or a.desired != "run" or a.terminal or not a.resources.memory:
            continue
        if (a.resources.cpu, a.resources.memory) != (have.cpu, have.memory):
            out.append((a.id, a.resources))
    return out


def _limits(r: Resources) -> dict[str, int]:
    return {"cpu": r.cpu, "memory": r.memory}


def base_env() -> dict[str, str]:
    """The few variables of the agent's environment every instance inherits."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONUNBUFFERED")  # not HOME, USER: the driver's
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _os_error(e: OSError) -> str:
    """``No space left on device (errno 28)``."""
    return f"{e.strerror} (errno {e.errno})" if e.errno and e.strerror else str(e)


def _describe(e: BaseException) -> str:
    """What went wrong, the errors inside an exception group rather than the group."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}" if not isinstance(e, OSError) else str(e)


class AllocRunner:
    def __init__(
        self,
        alloc: Allocation,
        workload: Workload | None,
        driver: Driver,
        *,
        alloc_root: Path,
        state_dir: Path,
        report: Report,
        deps_ready: DepsReady,
        clock: Clock = SYSTEM,
        drain: Drain | None = None,
        node_env: dict[str, str] | None = None,
        ports: PortAllocator | None = None,
        upstreams_down: UpstreamsDown | None = None,
        previous_failure: PreviousFailure | None = None,
        port_taken: Callable[[int], Holder | None] = taken_by,
    ) -> None:
        self.alloc = alloc
        self.workload = workload
        self.driver = driver
        self.alloc_dir = alloc_root / alloc.id
        self.handle_file = state_dir / f"{alloc.id}.json"
        self.report = report
        self.deps_ready = deps_ready
        self.clock = clock
        self.state = RunnerState(status=alloc.status, restarts=alloc.restarts)
        self.handle: Handle | None = None
        self.stop_requested = asyncio.Event()
        self.drain = drain
        self.node_env = node_env if node_env is not None else {}  # the node's, e.g. ELASTIN_DNS
        self.drain_after = 0  # the server revision that told this instance to stop
        self.done = asyncio.Event()
        self.ports: dict[str, int] = dict(alloc.ports)
        # the node's ports (one allocator per agent); a runner alone gets its own
        self.pool = ports if ports is not None else PortAllocator()
        if workload is not None:  # its fixed ports are never handed out to another
            self.pool.want(alloc.id, [p.port for p in workload.ports if p.port])
        for name, port in self.ports.items():
            # ports it was given before (it waited to start when an earlier agent process
            # stopped; the node's mesh snapshot has its upstream listeners on them): its own
            # from now on, not another's from a take before it starts
            self.pool.claim(alloc.id, port, self._port_what(name))
        self.upstreams_down = upstreams_down
        self.previous_failure = previous_failure
        self.port_taken = port_taken  # who holds a port (None: free); blocking
        self.run_started = clock.monotonic()  # when the current run began (restart counting)
        # what the running instance was started with (its environment: for exec and an exec
        # health check, which must not reserve ports to learn it); None when none runs
        self.instance: InstanceConfig | None = None
        self._resizing = asyncio.Lock()
        # the cpu and memory limits the running instance has (None when none runs): a
        # resize compares the allocation's resources with them
        self.applied: Resources | None = None

    # handle persistence --------------------------------------------------------------
    def save_handle(self, handle: Handle) -> None:
        self.handle_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.handle_file.with_suffix(".tmp")
        data = {
            "handle": to_data(handle),
            "alloc": to_data(self.alloc),
            "restarts": self.state.restarts,
            "ports": self.ports,
        }
        tmp.write_text(json.dumps(data))
        tmp.replace(self.handle_file)

    async def _record(self, handle: Handle) -> OSError | None:
        """Save the handle, retrying after ``SAVE_RETRIES`` (a full disk may get room back:
        the agent truncates logs every second); the last error when it could not."""
        for delay in (*SAVE_RETRIES, None):
            try:
                self.save_handle(handle)
                return None
            except OSError as e:
                with contextlib.suppress(OSError):
                    self.handle_file.with_suffix(".tmp").unlink()
                if delay is None:
                    return e
                log.warning("cannot save the handle of %s (retrying): %s", self.alloc.name, e)
                await self.clock.sleep(delay)
        return None  # pragma: no cover

    def forget_handle(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.handle_file.unlink()

    @staticmethod
    def load_handle(path: Path) -> tuple[Handle, Allocation, int, dict[str, int]] | None:
        try:
            data = json.loads(path.read_text())
            return (
                from_data(Handle, data["handle"]),
                from_data(Allocation, data["alloc"]),
                int(data.get("restarts", 0)),
                {str(k): int(v) for k, v in data.get("ports", {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError, Exception):
            return None

    # lifecycle -----------------------------------------------------------------------
    def request_stop(self, reason: str = "", drain_after: int = 0) -> None:
        """Stop the instance. ``drain_after``: the revision at which the server stopped it;
        a service's instance leaves every proxy (and finishes what they still send it)
        before it is signalled."""
        if drain_after and not self.stop_requested.is_set():
            self.drain_after = drain_after
        self.stop_requested.set()

    async def resize(self, resources: Resources) -> None:
        """The server changed this allocation's resources in place: a running instance gets
        the new limits live (same pid; event ``alloc.resized``), and every later start uses
        them. A driver that refuses (memory below what the instance uses) or cannot leaves
        the instance as it runs, and the runner keeps the limits it runs with: a warning
        event ``alloc.resize_failed`` says why, and the report's ``resize_refused`` (the
        limits refused and those it runs with) has the server put the allocation's
        resources back, so that its accounting and ``auto`` see the instance as it is."""
        async with self._resizing:
            old = self.alloc.resources
            if (old.cpu, old.memory) == (resources.cpu, resources.memory):
                return
            self.alloc = replace(self.alloc, resources=resources)
            handle = self.handle
            if handle is None or self.applied is None or self.state.status != "running":
                # not running, or starting (``_start`` applies it once the instance runs)
                change = describe_resize(old, resources)
                self._event("alloc.resized", f"{change}: applies when it starts")
                return
            await self._apply_limits(handle, self.applied)

    async def _catch_up(self, handle: Handle) -> None:
        """A resize that came while the instance was starting (its configuration was built
        with the resources before it): applied now that it runs."""
        async with self._resizing:
            applied = self.applied
            want = self.alloc.resources
            if applied is None or not want.memory:  # none known: it runs with the spec's
                return
            if (applied.cpu, applied.memory) != (want.cpu, want.memory):
                await self._apply_limits(handle, applied)

    async def _apply_limits(self, handle: Handle, running: Resources) -> None:
        """Give the instance (running with ``running``) the allocation's resources live;
        on a refusal keep ``running`` and tell the server (see ``resize``). Under
        ``_resizing``."""
        want = self.alloc.resources
        change = describe_resize(running, want)
        try:
            await self.driver.resize(handle, want)
        except (DriverError, OSError) as e:
            kept = replace(want, cpu=running.cpu, memory=running.memory)
            self.alloc = replace(self.alloc, resources=kept)
            message = (
                f"{change} not applied in place: {e}; it keeps running with cpu "
                f"{format_cpu(kept.cpu)}, memory {format_size(kept.memory)} (the allocation's "
                "resources are put back to them)"
            )
            self.report(
                self.alloc.id,
                resize_refused={"refused": _limits(want), "running": _limits(kept)},
                events=[("alloc.resize_failed", self.alloc.label, message, "warning")],
            )
            return
        self.applied = want
        with contextlib.suppress(OSError):  # a restarted agent knows the new limits
            self.save_handle(handle)
        self._event("alloc.resized", f"{change} in place (pid {handle.pid}, no restart)")

    def _set(self, status: AllocStatus, **extra: Any) -> None:
        check_transition(self.state.status, status)  # IllegalTransition: a bug here
        self.state.status = status
        self.report(self.alloc.id, status=status, restarts=self.state.restarts, **extra)

    def _event(self, type_: str, message: str, level: str = "info") -> None:
        self.report(self.alloc.id, events=[(type_, self.alloc.label, message, level)])

    async def run(self, recovered: Handle | None = None) -> None:
        try:
            await self._run(recovered)
        except asyncio.CancelledError:
            # the agent stops: the instance (if any) keeps running, so this is not "done"
            raise
        except Exception as e:  # a bug here must not take the agent down with it
            log.exception("runner for %s failed", self.alloc.name)
            why = f"the agent's runner for it failed: {_describe(e)}"
            self._event("alloc.agent_error", f"{why} (traceback in the agent's log)", "error")
            await self._abandon(why)
        self.pool.release(self.alloc.id)  # the instance and its upstream listeners are gone
        self.done.set()

    async def _abandon(self, why: str) -> None:
        """The runner cannot go on: stop the instance it started (nothing would watch it
        any more) and report the allocation failed, with no pid."""
        handle = self.handle
        stopped = ""
        if handle is not None:
            grace = self.workload.stop_grace if self.workload else 10.0
            try:
                await self.driver.stop(handle, grace)
                stopped = f"; its instance (pid {handle.pid}) was stopped"
            except (DriverError, OSError) as e:
                stopped = f"; stopping its instance (pid {handle.pid}) failed: {e}"
            with contextlib.suppress(DriverError, OSError):
                await self.driver.cleanup(handle)
            with contextlib.suppress(OSError):
                self.forget_handle()
            self.handle = None
        self.state.pid = 0
        reason = why + stopped
        if self.state.status not in TERMINAL:
            self._set("failed", reason=reason, pid=0)
            self._event("alloc.failed", reason, "error")

    async def _run(self, recovered: Handle | None) -> None:
        w = self.workload
        if recovered is not None:
            self.handle = recovered
            self.applied = self.alloc.resources  # as saved with its handle
            # its environment as it was started (its ports are the handle's)
            self.instance = self.instance_config(w) if w is not None else None
            self.state.status = "running"  # the previous agent process started it
            if await self.driver.recover(recovered):
                self._set("running", pid=recovered.pid, reason="re-attached after agent restart")
                self._event("alloc.reattached", f"re-attached to pid {recovered.pid}")
            result = await self._supervise(recovered, w)
            if not await self._after_exit(result, w):
                return
        elif w is None:
            self._set("failed", reason="the workload's spec is not available to the agent")
            return
        else:
            if not await self._wait_deps(w):
                return
            if not await self._wait_retry(w):
                return
        assert w is not None
        while not self.stop_requested.is_set():
            handle = await self._start(w)
            if handle is None:
                return
            result = await self._supervise(handle, w)
            if not await self._after_exit(result, w):
                return
        self._set("stopped", reason="stopped", pid=0)

    async def _wait_deps(self, w: Workload) -> bool:
        last = ""
        while not self.stop_requested.is_set():
            why = await self.deps_ready(self.alloc, w)
            if not why:
                return True
            if why != last:
                # an allocation started again after an agent restart may be ``starting``
                # already (it had passed this wait): it stays so (never back to pending)
                waiting: AllocStatus = "pending" if self.state.status == "pending" else "starting"
                self._set(waiting, reason=why)
                last = why
            await self._stop_within(1.0)
        self._set("stopped", reason="stopped before it started")
        return False

    async def _wait_retry(self, w: Workload) -> bool:
        """A job's retry waits ``retry_wait(attempt)`` first (``starting``, with the reason);
        False when it was stopped meanwhile."""
        attempt = self.alloc.attempt
        wait = w.retry_wait(attempt) if w.type == "job" else 0.0
        if wait <= 0:
            return True
        after = ""
        if self.previous_failure is not None:
            with contextlib.suppress(Exception):  # only a detail of the reason
                why = await self.previous_failure(self.alloc)
                after = f" (after: {why})" if why else ""
        self._set("starting", reason=f"retry {attempt} of {w.retries} in {wait:g}s{after}")
        if await self._stop_within(wait):
            self._set("stopped", reason="stopped before its retry started", pid=0)
            return False
        return True

    async def _stop_within(self, seconds: float) -> bool:
        """Wait until a stop is asked or ``seconds`` passed on the clock; True when asked."""
        if self.stop_requested.is_set():
            return True
        async with asyncio.TaskGroup() as tg:
            asked = tg.create_task(self.stop_requested.wait())
            timer = tg.create_task(self.clock.sleep(seconds))
            await asyncio.wait({asked, timer}, return_when=asyncio.FIRST_COMPLETED)
            asked.cancel()
            timer.cancel()
        return self.stop_requested.is_set()

    def reserve_ports(self, w: Workload | None) -> list[str]:
        """Reserve the ports this instance has (re-attached, or given by the server) and take
        the ones it still needs from the node's allocator. Returns the conflicts: a port this
        runner had that another allocation here holds (its own are kept anyway)."""
        conflicts = []
        for name, port in self.ports.items():
            other = self.pool.claim(self.alloc.id, port, self._port_what(name))
            if other is not None:
                conflicts.append(f"port {port} ({name}) is also {other.what}'s")
        if w is None:
            return conflicts
        wanted = [p.name for p in w.ports if not p.port]
        wanted += [UPSTREAM_PREFIX + up for up in w.upstreams]
        for name in wanted:
            if name not in self.ports:
                self.ports[name] = self.pool.take(self.alloc.id, self._port_what(name))
        return conflicts

    def _port_what(self, name: str) -> str:
        if name.startswith(UPSTREAM_PREFIX):
            return f"{self.alloc.label}: upstream listener {name[len(UPSTREAM_PREFIX) :]}"
        return f"{self.alloc.label}: port {name}"

    def config(self, w: Workload) -> InstanceConfig:
        """The configuration to start an instance with: its ports reserved first (a dynamic
        one taken from the node's allocator: ``NoFreePort``)."""
        for p in w.ports:
            if p.name not in self.ports and p.port:
                self.ports[p.name] = p.port
        self.reserve_ports(w)
        return self.instance_config(w)

    def instance_config(self, w: Workload) -> InstanceConfig:
        """The configuration of an instance with the ports this runner has (no side effect:
        nothing is reserved; a port it does not have is left out of the environment)."""
        env = base_env()
        env.update(self.node_env)
        env.update(
            {
                "ELASTIN_ALLOC_ID": self.alloc.id,
                "ELASTIN_APP": self.alloc.app,
                "ELASTIN_WORKLOAD": self.alloc.workload,
                "ELASTIN_INDEX": str(self.alloc.index),
                "ELASTIN_ALLOC_DIR": str(self.alloc_dir),
            }
        )
        for i, p in enumerate(w.ports):
            if p.name not in self.ports:
                continue
            env[f"ELASTIN_PORT_{p.name.upper().replace('-', '_')}"] = str(self.ports[p.name])
            if i == 0:
                env["PORT"] = str(self.ports[p.name])
        for up in w.upstreams:
            # the local mesh listener that belongs to this instance alone (docs/mesh.md)
            key = UPSTREAM_PREFIX + up
            if key not in self.ports:
                continue
            var = f"ELASTIN_UPSTREAM_{up.upper().replace('-', '_')}"
            env[var] = f"127.0.0.1:{self.ports[key]}"
            env[var + "_URL"] = f"http://127.0.0.1:{self.ports[key]}"
        env.update(w.env_dict())
        return InstanceConfig(
            alloc_id=self.alloc.id,
            name=self.alloc.name,
            command=w.command,
            env=env,
            workdir=w.workdir,
            # the allocation's: the spec's unless it was resized in place since
            resources=self.alloc.resources if self.alloc.resources.memory else w.resources,
            alloc_dir=str(self.alloc_dir),
            pids_limit=w.pids,
            image=w.image,
            user=w.user,
            bind_low_ports=any(0 < p.port < 1024 for p in w.ports),
        )

    async def _start(self, w: Workload) -> Handle | None:
        self._set("starting", reason="")
        try:
            self.alloc_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            why = (
                f"cannot create the allocation directory {self.alloc_dir}: {_os_error(e)}; "
                "free space on the agent's data disk (or check its permissions)"
            )
            self._set("failed", reason=why, pid=0)
            self._event("alloc.start_failed", why, "error")
            return None
        taken = await self._fixed_ports(w)
        if taken is None:
            return None  # stopped meanwhile
        if taken:
            self._set("failed", reason=taken, pid=0)
            self._event("alloc.start_failed", taken, "error")
            return None
        try:
            config = self.config(w)
        except NoFreePort as e:
            why = f"cannot give the instance its ports: {e}"
            self._set("failed", reason=why, pid=0)
            self._event("alloc.start_failed", why, "error")
            return None
        if not await self._wait_upstreams(w):
            return None
        try:
            handle = await self.driver.start(config)
        except DriverError as e:
            self._set("failed", reason=str(e), pid=0)
            self._event("alloc.start_failed", str(e), "error")
            return None
        self.handle = handle
        self.instance = config
        self.applied = config.resources
        self.run_started = self.clock.monotonic()
        err = await self._record(handle)
        if err is not None:
            why = (
                f"started, but its handle could not be written to {self.handle_file}: "
                f"{_os_error(err)}, "
                f"{len(SAVE_RETRIES) + 1} tries; without it a restarted agent could not find "
                "the instance. Free space on the agent's data disk"
            )
            await self._abandon(why)
            return None
        self.state.pid = handle.pid
        self._set("running", pid=handle.pid, reason="", ports=sorted(self.ports.items()))
        self._event("alloc.started", f"pid {handle.pid}")
        await self._catch_up(handle)
        return handle

    async def _fixed_ports(self, w: Workload) -> str | None:
        """Reserve the workload's fixed ports and check that no process holds them: "" when
        all are free, why not (the port and who holds it) otherwise, None when a stop was
        asked meanwhile. A port another allocation of this node holds, or a process of an
        Elastin instance (a replaced instance still stopping, here or on another agent of
        this machine), is waited for, at most ``PORT_WAIT`` s; any other holder fails the
        start at once."""
        for p in w.ports:
            if not p.port:
                continue
            deadline = self.clock.monotonic() + PORT_WAIT
            told = ""
            while True:
                other = self.pool.claim(self.alloc.id, p.port, self._port_what(p.name))
                holder = None if other else await asyncio.to_thread(self.port_taken, p.port)
                stopping = other is not None or (holder is not None and holder.instance)
                if not stopping or self.clock.monotonic() >= deadline:
                    break
                if other is not None:
                    who = other.what  # "app.web[0] 1a2b3c4d: port http"
                else:
                    who = f"{holder.who if holder else ''}, an Elastin instance,"
                why = f"waiting for port {p.port}: {who} holds it"
                if why != told:
                    self._set("starting", reason=why)
                    told = why
                if await self._stop_within(PORT_POLL):
                    self._set("stopped", reason="stopped before it started", pid=0)
                    return None
            if told:
                self._set("starting", reason="")
            if other is None and holder is None:
                continue
            by = holder.who if holder is not None else f"{other.what if other else ''} (here)"
            return (
                f"port {p.port} ({p.name}) is already in use by {by}: stop that process, "
                f"or give {self.alloc.workload} another port (or none, for one chosen by "
                "Elastin)"
            )
        return ""

    async def _wait_upstreams(self, w: Workload) -> bool:
        """Report the instance's ports (the server then adds its upstream listeners to this
        node's proxy) and wait until each listener accepts connections, at most
        ``UPSTREAM_WAIT`` s: after that it starts anyway, with a warning event naming the
        listeners that never came up. False when a stop was asked meanwhile."""
        if not w.upstreams or self.upstreams_down is None:
            return True
        deadline = self.clock.monotonic() + UPSTREAM_WAIT
        ports = sorted(self.ports.items())
        last: list[str] | None = None
        while True:
            down = await self.upstreams_down(self.alloc, w, dict(self.ports))
            if not down:
                return True
            if down != last:
                self._set(
                    "starting",
                    reason="waiting for the node's proxy to listen for upstream " + ", ".join(down),
                    ports=ports,
                )
                last = down
            if self.clock.monotonic() >= deadline:
                self._event(
                    "alloc.upstreams_not_ready",
                    f"starting without its upstream listener(s) {', '.join(down)}: the node's "
                    f"proxy did not listen on them within {UPSTREAM_WAIT:g}s (see the mesh "
                    "events and the agent's log); the instance's own retries apply",
                    "warning",
                )
                return True
            if await self._stop_within(UPSTREAM_POLL):
                self._set("stopped", reason="stopped before it started", pid=0)
                return False

    async def _supervise(self, handle: Handle, w: Workload | None) -> ExitResult | None:
        """Wait for the instance to exit (result) or for a stop request (None after stop)."""
        async with asyncio.TaskGroup() as tg:
            waiter = tg.create_task(self.driver.wait(handle))
            stopper = tg.create_task(self.stop_requested.wait())
            health = tg.create_task(self._health_loop(w)) if w and w.health else None
            done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                grace = w.stop_grace if w else 10.0
                if self.drain and self.drain_after and w and w.ports and w.type == "service":
                    try:
                        said = await self.drain(self.alloc, self.drain_after, grace)
                    except Exception as e:  # a bug in the drain must not keep it running
                        log.exception("draining %s", self.alloc.name)
                        said = f"the drain failed ({type(e).__name__}: {e}); stopping"
                    self._event("alloc.draining", said)
                await self.driver.stop(handle, grace)
            result = await waiter
            stopper.cancel()
            if health:
                health.cancel()
        with contextlib.suppress(DriverError, OSError):
            await self.driver.cleanup(handle)
        self.forget_handle()
        self.handle = None
        self.instance = None
        self.applied = None
        self.state.pid = 0
        return result

    async def _after_exit(self, result: ExitResult | None, w: Workload | None) -> bool:
        """Report the exit; return True when the instance should be started again."""
        assert result is not None
        what = result.describe()
        if result.oom_killed:
            self._event("alloc.oom_killed", what, "error")
        if self.stop_requested.is_set():
            self._set("stopped", reason="stopped", exit_code=result.exit_code, pid=0)
            self._event("alloc.stopped", f"stopped ({what})")
            return False
        ok = result.success and not result.oom_killed
        self._event("alloc.exited", what, "info" if ok else "warning")
        if w is None:
            self._set("complete" if ok else "failed", reason=what, exit_code=result.exit_code)
            return False
        decision = decide(
            w.restart,
            w.type,
            restarts=self.state.restarts,
            started=self.run_started,
            ended=self.clock.monotonic(),
            ok=ok,
        )
        if isinstance(decision, Finish):
            self._set(decision.status, reason=what, exit_code=result.exit_code, pid=0)
            return False
        self.state.restarts = decision.restarts
        if isinstance(decision, GiveUp):
            reason = f"{what}; gave up after {self.state.restarts} restarts"
            self._set("failed", reason=reason, exit_code=result.exit_code, pid=0)
            self._event("alloc.failed", reason, "error")
            return False
        delay = decision.delay
        # status starting with this reason: the CLI shows "restarting" (cleared when it runs)
        self._set(
            "starting",
            reason=f"restarting in {delay:g}s: {what}",
            exit_code=result.exit_code,
            pid=0,
        )
        self._event(
            "alloc.restarting",
            f"restart {self.state.restarts} in {delay:g}s after it {what}",
            "warning",
        )
        if await self._stop_within(delay):
            self._set("stopped", reason="stopped during restart backoff", pid=0)
            return False
        return True

    async def _health_loop(self, w: Workload | None) -> None:
        if w is None or w.health is None:
            return
        check = w.health
        state = HealthState(check, started_at=self.clock.monotonic())
        port_name = check.port or (w.ports[0].name if w.ports else "")
        port = self.ports.get(port_name)
        # the instance's own environment (never ``config``: that reserves ports)
        env = self.instance.env if self.instance is not None else self.instance_config(w).env

        async def exec_in(command: tuple[str, ...]) -> int:
            if self.handle is None:
                raise StartError("the instance is not running")
            return await self.driver.exec_in(self.handle, command, env)

        for _ in range(10**9):  # bounded only by the instance's life
            ok, err = await probe(check, "127.0.0.1", port, exec_in)
            now = self.clock.monotonic()
            verdict = state.record(ok, now, err) if state.counts(ok, now) else None
            if verdict is not None:
                self.state.healthy = verdict
                self.report(self.alloc.id, healthy=verdict)
                if verdict:
                    self._event("alloc.healthy", "health check passes")
                else:
                    self._event("alloc.unhealthy", f"health check fails: {err}", "warning")
            await self.clock.sleep(state.wait())

    async def sample(self) -> Usage | None:
        if self.handle is None:
            return None
        try:
            self.state.usage = await self.driver.stats(self.handle)
        except (DriverError, OSError):
            return None
        return self.state.usage
