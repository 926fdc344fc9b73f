"""The agent's mesh manager: keeps this node's HAProxy in step with its mesh snapshot.

It follows the node's snapshot stream (the server pushes each new version) and acknowledges
each version once its proxy serves it, which is how an agent stopping an instance knows
every proxy has dropped it (``docs/mesh.md``, "Draining").
Endpoint churn goes to the running proxy through the runtime API (no reload); a structural
change renders the configuration and reloads hitlessly; a runtime command the proxy refuses
falls back to a reload; a proxy that died is started again with the current snapshot.
HAProxy runs detached, so a restart of the agent leaves it and its traffic untouched: the new
agent finds it by its pid file and reloads it once with the snapshot it fetches.

The proxy is a ``Proxy`` (``HaproxyProcess`` on a node; ``elastin.testing.FakeProxy`` in
tests), given to the manager; ``None`` when this node has no ``haproxy`` binary
(``local_haproxy``): the manager says so once and stays idle, the rest of the agent works as
before. Everything runs on the event loop: runtime commands through the proxy's asynchronous
client, starts and reloads in a worker thread; one ``asyncio.Lock`` serialises apply, the
deletion of drained servers and restarts.

Failures stay confined: an application whose part of the configuration cannot be rendered is
left out of it (``leave_out_unrenderable``; logged with the reason, and ``on_left_out`` tells
the agent, which makes it an event) while every other application keeps its listeners; an
unexpected error in one step is logged with its traceback and the step is tried again
(``keep_running``), it never ends the agent.

The access log: HAProxy writes it into a ring in its memory; the manager's
``AccessLogCollector`` drains it into ``haproxy.log`` in the mesh directory (beside
HAProxy's own messages), which ``elastin logs --mesh`` reads, and rotates that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from elastin.agent.logfiles import rotate
from elastin.client.errors import ClientError
from elastin.clock import SYSTEM, Clock
from elastin.mesh.haproxy.accesslog import AccessLogCollector
from elastin.mesh.haproxy.process import HaproxyProcess, haproxy_binary
from elastin.mesh.haproxy.render import Paths, app_of, leave_out_unrenderable, render
from elastin.mesh.haproxy.runtime import runtime_commands
from elastin.mesh.haproxy.runtime_client import HaproxyError, RuntimeClient
from elastin.mesh.haproxy.stats import allocation_in_flight, parse_stats
from elastin.mesh.model import Listener, MeshSnapshot, diff
from elastin.mesh.model.traffic import ClusterStats

log = logging.getLogger("elastin.agent.mesh")

DRAIN_SECONDS = 2.0
# the access log (one line per request, drained from HAProxy's ring) is rotated
# copy-truncate like workload logs: at most LOG_FILES files of LOG_MAX_BYTES on disk
LOG_MAX_BYTES = 64 << 20
LOG_FILES = 3
SUPERVISE_SECONDS = 1.0  # how often the proxy's life, its log and its counters are checked

# per-cluster counters of the node's proxy, as ``parse_stats`` reads them
Stats = dict[str, ClusterStats]
# told when an application is left out of the proxy's configuration: (app, why, the local
# allocations whose upstream listeners to it were dropped)
LeftOut = Callable[[str, str, tuple[str, ...]], None]
RETRY_MAX = 30.0  # seconds: the longest wait before a failed task is run again


async def keep_running(
    name: str,
    task: Callable[[], Awaitable[None]],
    clock: Clock = SYSTEM,
    give_up_after: int = 0,
) -> None:
    """Run ``task`` until it returns (or is cancelled); when it fails unexpectedly, log the
    error with its traceback and run it again (after 1 s, doubling up to ``RETRY_MAX`` while
    it keeps failing): one bug in one of the agent's loops does not stop the node's other
    work. ``give_up_after`` (> 0): after that many failures in a row, each soon after the
    last, the error is raised — a loop the node cannot do without (watching its allocations,
    its heartbeat) failing for minutes stops the agent loudly instead of a node that looks
    healthy while it does nothing."""
    delay = 1.0
    failures = 0
    while True:
        started = clock.monotonic()
        try:
            await task()
            return
        except Exception:
            if clock.monotonic() - started > RETRY_MAX:
                delay, failures = 1.0, 0  # it had been working for a while: a new failure
            failures += 1
            if give_up_after and failures >= give_up_after:
                log.error("%s failed %d times in a row; giving up", name, failures)
                raise
            log.exception("%s failed unexpectedly; running it again in %gs", name, delay)
        await clock.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


def without(snap: MeshSnapshot, apps: set[str]) -> MeshSnapshot:
    """``snap`` without the clusters of ``apps`` and the listeners that lead to them."""
    if not apps:
        return snap
    clusters = tuple(c for c in snap.clusters if app_of(c.name) not in apps)
    listeners = tuple(lst for lst in snap.listeners if app_of(lst.cluster) not in apps)
    return replace(snap, clusters=clusters, listeners=listeners)


class Proxy(Protocol):
    """What the manager needs of a node's proxy (``HaproxyProcess``, ``FakeProxy``).

    ``load`` starts it with a configuration, or reloads it when it runs ("started" /
    "reloaded"; ``HaproxyError`` when the configuration is refused); ``command`` sends a
    runtime API command (``HaproxyError`` on a refusal, ``OSError`` when it does not
    answer); ``unreachable`` names the listeners that do not accept connections within
    ``timeout`` s; ``reloads`` and ``starts`` count what ``load`` did."""

    reloads: int
    starts: int

    def paths(self) -> Paths: ...

    def alive(self) -> bool: ...

    async def load(self, text: str) -> str: ...

    async def command(self, command: str) -> str: ...

    async def unreachable(self, listeners: Sequence[Listener], timeout: float) -> list[str]: ...

    def stop(self) -> None: ...


class MeshClient(Protocol):
    """The server's calls the manager makes (``elastin.client.AsyncClient`` has them)."""

    def mesh_stream(self, node_id: str, quiet: float = 60.0) -> AsyncIterator[MeshSnapshot]: ...

    async def mesh_ack(self, node_id: str, version: int) -> None: ...


def local_haproxy(directory: Path, clock: Clock = SYSTEM) -> HaproxyProcess | None:
    """This node's HAProxy, run from ``directory``; None without an ``haproxy`` binary."""
    binary = haproxy_binary()
    return HaproxyProcess(directory, binary, clock) if binary else None


class MeshManager:
    def __init__(
        self,
        client: Callable[[], MeshClient],
        node_id: str,
        directory: Path,
        proxy: Proxy | None,
        *,
        clock: Clock = SYSTEM,
        on_left_out: LeftOut | None = None,
    ) -> None:
        self.client = client
        self.node_id = node_id
        self.dir = directory
        self.proxy = proxy
        self.clock = clock
        sock = proxy.paths().runtime_socket if proxy else directory / "haproxy.sock"
        self.access_log = AccessLogCollector(RuntimeClient(sock), self.log_path, clock=clock)
        self.current: MeshSnapshot | None = None
        self.pending_deletes: list[str] = []
        self.runtime_commands = 0  # sent through the runtime API (endpoint churn, no reload)
        self._lock = asyncio.Lock()  # apply, delete_drained and restart: one at a time
        self._stats: Stats = {}
        self.exporter_port = self._exporter_port()
        self.on_left_out = on_left_out
        self.left_out: dict[str, str] = {}  # applications not in the configuration, and why
        self._rendered: tuple[MeshSnapshot, str] | None = None  # the last render, reused

    @property
    def log_path(self) -> Path:
        return self.dir / "haproxy.log"

    def _exporter_port(self) -> int:
        """The port of HAProxy's Prometheus exporter: chosen once per node and kept (in the
        mesh directory), so that agent restarts do not change it."""
        path = self.dir / "exporter-port"
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            pass
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with contextlib.suppress(OSError):
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(str(port))
        return port

    def stats(self) -> Stats:
        """Per-cluster counters of the running proxy as last read (``read_stats``, every
        ``SUPERVISE_SECONDS`` by ``supervise``); empty when none runs."""
        if self.proxy is None or not self.proxy.alive():
            return {}
        return self._stats

    async def read_stats(self) -> Stats:
        """Read the running proxy's per-cluster counters now (empty when none runs)."""
        stats: Stats = {}  # assigned whole: /metrics reads it from another thread
        if self.proxy is not None and self.proxy.alive():
            with contextlib.suppress(HaproxyError, OSError):
                stats = parse_stats(await self.proxy.command("show stat -1 6 -1"))
        self._stats = stats
        return stats

    def _config(self, snap: MeshSnapshot) -> str:
        assert self.proxy is not None
        if self._rendered is not None and self._rendered[0] is snap:
            return self._rendered[1]
        text = render(snap, self.proxy.paths())
        self._rendered = (snap, text)
        return text

    def _left_out_changed(self, snap: MeshSnapshot) -> bool:
        """Whether the applications left out would not all be left out of ``snap`` (fixed,
        or gone): rendered alone, they cost what they are."""
        if not self.left_out:
            return False
        assert self.proxy is not None
        apps = set(self.left_out)
        alone = replace(
            snap,
            clusters=tuple(c for c in snap.clusters if app_of(c.name) in apps),
            listeners=tuple(lst for lst in snap.listeners if app_of(lst.cluster) in apps),
        )
        return leave_out_unrenderable(alone, self.proxy.paths())[2] != self.left_out

    def _renderable(self, snap: MeshSnapshot) -> MeshSnapshot:
        """``snap`` without the applications whose part cannot be rendered (``left_out``);
        logs when an application is left out, and when it is no longer."""
        assert self.proxy is not None
        kept, text, bad = leave_out_unrenderable(snap, self.proxy.paths())
        self._rendered = (kept, text)  # what ``_full`` loads, when it reloads
        for app, why in bad.items():
            if self.left_out.get(app) != why:
                log.error(
                    "mesh version %d: application %s left out of this node's proxy, its "
                    "configuration cannot be rendered (%s); the other applications keep theirs",
                    snap.version,
                    app,
                    why,
                )
        for app in set(self.left_out) - set(bad):
            log.warning(
                "mesh version %d: application %s is no longer left out of the proxy",
                snap.version,
                app,
            )
        self.left_out = bad
        return kept

    async def _full(self, snap: MeshSnapshot) -> str:
        """Start or reload with the whole configuration, and check that it took effect: a
        reload signalled while the previous one was still re-executing can be lost."""
        assert self.proxy is not None
        done = await self.proxy.load(self._config(snap))
        for _ in range(3):
            missing = await self.proxy.unreachable(snap.listeners, 3.0)
            if not missing:
                break
            log.warning("listeners not up after %s: %s; reloading again", done, ", ".join(missing))
            done = await self.proxy.load(self._config(snap))
        self.current = snap
        self.access_log.wake()  # a new worker: follow its access log at once
        return done

    async def apply(self, snap: MeshSnapshot) -> str:
        """Bring the proxy to ``snap``; returns what was done (for logs and tests):
        "idle", "started", "reloaded", "updated" (runtime commands) or "unchanged"."""
        async with self._lock:
            done = await self._apply(snap)
        self._tell_left_out(snap)
        return done

    def _tell_left_out(self, snap: MeshSnapshot) -> None:
        """``on_left_out`` for every application left out, at every version: the allocations
        here that should hear of it change from one version to the next."""
        if self.on_left_out is None:
            return
        for app, why in self.left_out.items():
            # the listeners dropped with it are named <allocation>.<upstream>
            dropped = [lst for lst in snap.listeners if app_of(lst.cluster) == app]
            callers = tuple(sorted({lst.name.split(".", 1)[0] for lst in dropped}))
            try:
                self.on_left_out(app, why, callers)
            except Exception:
                log.exception("cannot report that %s was left out of the mesh", app)

    async def _apply(self, snap: MeshSnapshot) -> str:
        assert self.proxy is not None
        full = replace(snap, metrics_port=self.exporter_port)
        if not full.listeners and not self.proxy.alive():
            self.current = full
            return "idle"  # nothing to serve yet: do not start a proxy for nothing
        if self.current is None or not self.proxy.alive():
            return await self._full(self._renderable(full))
        # endpoint churn needs no render of the whole; what was left out is tried alone
        snap = without(full, set(self.left_out))
        d = diff(self.current, snap)
        if d.reload or self._left_out_changed(full):
            return await self._full(self._renderable(full))
        now, later = runtime_commands(d, snap)
        try:
            for cmd in now:
                await self.proxy.command(cmd)
                self.runtime_commands += 1
        except (HaproxyError, OSError) as e:
            log.warning("runtime update failed (%s); reloading instead", e)
            return await self._full(self._renderable(full))
        self.pending_deletes += later
        self.current = snap
        return "updated" if now else "unchanged"

    async def in_flight(self, allocation: str) -> int:
        """Requests this node's proxy is still serving on any endpoint of ``allocation``
        (its endpoints' ids are ``<allocation>-<port>``)."""
        if self.proxy is None or not self.proxy.alive():
            return 0
        try:
            text = await self.proxy.command("show stat -1 6 -1")  # backends + servers
        except (HaproxyError, OSError):
            return 0
        return allocation_in_flight(text, allocation)

    async def delete_drained(self) -> None:
        """Delete the removed servers HAProxy lets go (no connection left); the others are
        asked again later. A server that is gone already (a reload) is done."""
        async with self._lock:
            assert self.proxy is not None
            keep = []
            for cmd in self.pending_deletes:
                try:
                    await self.proxy.command(cmd)
                except HaproxyError as e:
                    if "no such server" not in str(e).lower():  # gone already: done
                        keep.append(cmd)  # still has connections: try again later
                except OSError:
                    keep.append(cmd)
            self.pending_deletes = keep[-1000:]

    async def _step(self, snap: MeshSnapshot) -> None:
        """Apply ``snap`` and acknowledge it when the server wants to know."""
        done = await self.apply(snap)
        if done not in ("unchanged", "idle"):
            log.info("mesh version %d: %s", snap.version, done)
        if not snap.ack_wanted:
            return  # the server acks only matter while an instance drains
        try:
            await self.client().mesh_ack(self.node_id, snap.version)
        except ClientError as e:
            log.warning("cannot acknowledge mesh version %d: %s", snap.version, e.message)

    async def run(self) -> None:
        """Follow the server's snapshot stream: apply the newest snapshot, acknowledge it,
        and delete drained servers on the side (so that a drain never delays the next
        change)."""
        if self.proxy is None:
            log.warning("no haproxy binary: the service mesh is off on this node")
            return
        mailbox: list[MeshSnapshot] = []  # the newest snapshot not applied yet
        arrived = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                keep_running(
                    "the mesh snapshot stream", lambda: self._receive(mailbox, arrived), self.clock
                )
            )
            tg.create_task(keep_running("the mesh access log", self.access_log.run, self.clock))
            tg.create_task(
                keep_running(
                    "the mesh's drained-server deletion", self._delete_drained_loop, self.clock
                )
            )
            while True:
                await arrived.wait()
                arrived.clear()
                snap = mailbox.pop()
                try:
                    await self._step(snap)
                except Exception as e:
                    if isinstance(e, HaproxyError | OSError):
                        log.error("cannot apply mesh version %d: %s", snap.version, e)
                    else:  # a bug: with its traceback
                        log.exception("cannot apply mesh version %d", snap.version)
                    await self.clock.sleep(1.0)
                    if not mailbox:  # nothing newer came: try this one again
                        mailbox.append(snap)
                    arrived.set()

    async def _receive(self, mailbox: list[MeshSnapshot], arrived: asyncio.Event) -> None:
        while True:
            try:
                async for snap in self.client().mesh_stream(self.node_id):
                    mailbox[:] = [snap]  # only the newest matters
                    arrived.set()
            except ClientError as e:
                log.warning("mesh snapshot stream: %s", e.message)
            await self.clock.sleep(1.0)

    async def _delete_drained_loop(self) -> None:
        while True:
            await self.clock.sleep(DRAIN_SECONDS)
            if self.pending_deletes:
                await self.delete_drained()

    async def restart_if_dead(self) -> bool:
        """Start the proxy again with the current snapshot when it died; True when it did."""
        async with self._lock:
            if (
                self.proxy is None
                or self.current is None
                or not self.current.listeners
                or self.proxy.alive()
            ):
                return False
            log.warning("haproxy is not running; starting it again")
            await self.proxy.load(self._config(self.current))
            self.access_log.wake()
            return True

    def rotate_log(self) -> bool:
        """Rotate the access log when it passed ``LOG_MAX_BYTES``; True when it did."""
        return rotate(self.log_path, LOG_MAX_BYTES, LOG_FILES - 1)

    async def supervise(self) -> None:
        """Start the proxy again when it dies; keep its log within bounds; read its
        counters for ``stats``."""
        if self.proxy is None:
            return
        while True:
            await self.clock.sleep(SUPERVISE_SECONDS)
            try:
                await asyncio.to_thread(self.rotate_log)
            except OSError as e:
                log.warning("cannot rotate the mesh access log: %s", e)
            try:
                await self.restart_if_dead()
            except (HaproxyError, OSError) as e:
                log.error("cannot restart haproxy: %s", e)
            except Exception:
                log.exception("cannot restart haproxy")
            try:
                await self.read_stats()
            except Exception:
                log.exception("cannot read haproxy's counters")
