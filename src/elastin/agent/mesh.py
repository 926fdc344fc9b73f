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

Ports: the proxy's exporter port comes from the node's ``PortAllocator`` (kept across agent
restarts in ``exporter-port``). A listener whose port another process holds would make the
whole configuration fail (HAProxy cannot bind it, and none of the node's listeners come up):
before every start or reload the manager checks the ports of the listeners the proxy does not
serve yet (``port_holder``) and leaves out a listener whose port is taken, logged and told
through ``on_listener_failed`` (the agent's ``mesh.listener_failed`` event naming the port
and who holds it); the other listeners come up, and the listener is added back once its port
is free (checked at every snapshot and every ``SUPERVISE_SECONDS``).

Counters: HAProxy counts from zero in every new worker (each reload, each restart);
``read_stats`` keeps the totals monotonic with ``stats.Totals`` (what the previous worker
counted is added; a worker is its pid and its start time), reads them just before every
reload (one reading at a time), and keeps the base in ``counters.json`` in the mesh
directory, so an agent restart keeps the totals too.

Scale to zero: while it runs, the manager serves a ``WakeListener`` on 127.0.0.1 (its URL goes
into the proxy's configuration, ``Paths.wake_url``). When the proxy holds a request for a
service scaled to zero its Lua tells the listener, and ``wake`` passes that on to the server
(``POST /v1/nodes/{id}/wake``, at most once per service per ``WAKE_EVERY`` seconds, in the
background), which starts a replica.

The access log: HAProxy writes it into a ring in its memory; the manager's
``AccessLogCollector`` drains it into ``haproxy.log`` in the mesh directory (beside
HAProxy's own messages), which ``elastin logs --mesh`` reads, and rotates that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from elastin.agent.logfiles import rotate
from elastin.agent.ports import PortAllocator, describe_pid, listening_pids, port_free
from elastin.agent.wake import WakeListener
from elastin.client.errors import ClientError
from elastin.clock import SYSTEM, Clock
from elastin.mesh.haproxy.accesslog import AccessLogCollector
from elastin.mesh.haproxy.process import HaproxyProcess, haproxy_binary, older_than_wanted
from elastin.mesh.haproxy.render import Paths, app_of, leave_out_unrenderable, render
from elastin.mesh.haproxy.runtime import runtime_commands
from elastin.mesh.haproxy.runtime_client import HaproxyError, RuntimeClient
from elastin.mesh.haproxy.stats import (
    ARRIVALS_COMMAND,
    InFlight,
    Totals,
    Worker,
    allocation_in_flight,
    endpoints_in_flight,
    parse_stats,
    split_info,
    stats_command,
)
from elastin.mesh.haproxy.stats import (
    STATS_COMMAND as STATS_COMMAND,  # what it reads with when no cluster keeps a histogram
)
from elastin.mesh.model import Listener, MeshSnapshot, diff
from elastin.mesh.model.names import ClusterName
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
# who holds a listener's address and port, when it is not this node's proxy (None: free, or
# the proxy's own); blocking (a bind, and /proc when it is taken)
PortHolder = Callable[[str, int], str | None]
# told when a listener is left out because its port is held: (the listener, who holds it)
ListenerFailed = Callable[[Listener, str], None]
PROXY_OWNER = "proxy"  # the owner of the proxy's own ports in the node's PortAllocator
WAKE_EVERY = 1.0  # seconds: a held service's wake goes to the server at most this often
# what a drain counts on every worker: backends and servers (``stats.endpoints_in_flight``)
IN_FLIGHT_COMMAND = "show stat -1 6 -1"
# seconds one reading of what is in flight serves every draining allocation of the node
# (the agent's drain polls as often): a mass stop asks the master CLI no more often
IN_FLIGHT_FRESH = 0.05
IN_FLIGHT_LIMIT = 5.0  # seconds one shared in-flight reading may take, whoever waits for it


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
    runtime API command to the current worker (``HaproxyError`` on a refusal, ``OSError``
    when it does not answer); ``each_worker`` sends one to every live worker, the old ones a
    reload left finishing their requests too, and returns their answers (all within
    ``timeout`` s when given: ``TimeoutError`` otherwise); ``unreachable``
    names the listeners that do not accept connections within ``timeout`` s; ``reloads`` and
    ``starts`` count what ``load`` did."""

    reloads: int
    starts: int

    def paths(self) -> Paths: ...

    def alive(self) -> bool: ...

    async def load(self, text: str) -> str: ...

    async def command(self, command: str) -> str: ...

    async def each_worker(self, command: str, timeout: float | None = None) -> list[str]: ...

    async def unreachable(self, listeners: Sequence[Listener], timeout: float) -> list[str]: ...

    def stop(self) -> None: ...


class MeshClient(Protocol):
    """The server's calls the manager makes (``elastin.client.AsyncClient`` has them)."""

    def mesh_stream(self, node_id: str, quiet: float = 60.0) -> AsyncIterator[MeshSnapshot]: ...

    async def mesh_ack(self, node_id: str, version: int) -> None: ...

    async def mesh_wake(self, node_id: str, held: dict[str, int]) -> object: ...


def foreign_holder(proxy: HaproxyProcess) -> PortHolder:
    """``PortHolder`` for a node running ``proxy``: a port its master or workers listen on
    is its own (an adopted proxy serves the listeners before the manager has a snapshot)."""

    def holder(address: str, port: int) -> str | None:
        if port_free(port, address):
            return None
        pids = listening_pids(port)
        foreign = [pid for pid in pids if not proxy.owns(pid)]
        if pids and not foreign:
            return None
        return describe_pid(foreign[0]) if foreign else "another process"

    return holder


def local_haproxy(directory: Path, clock: Clock = SYSTEM) -> HaproxyProcess | None:
    """This node's HAProxy, run from ``directory``; None without an ``haproxy`` binary."""
    binary = haproxy_binary()
    if binary is None:
        return None
    if (why := older_than_wanted(binary)) is not None:
        log.warning("%s", why)
    return HaproxyProcess(directory, binary, clock)


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
        ports: PortAllocator | None = None,
        port_holder: PortHolder | None = None,
        on_listener_failed: ListenerFailed | None = None,
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
        # the raw arrival counters per cluster of the metrics loop's last reading (``read_stats``
        # with ``mark``), the worker that answered and when (monotonic)
        self.reported_arrivals: tuple[Worker | None, dict[str, int], float] = (None, {}, 0.0)
        self._stats_lock = asyncio.Lock()  # read_stats: one reading at a time
        self.ports = ports if ports is not None else PortAllocator()
        self.port_holder = port_holder  # None: listeners' ports are not checked (tests)
        self.on_listener_failed = on_listener_failed
        # listeners left out, their port held by another process: name -> (port, holder)
        self.listener_failed: dict[str, tuple[int, str]] = {}
        self._last_full: MeshSnapshot | None = None  # the newest snapshot asked for
        self.totals = self._load_totals()
        self.exporter_port = self._exporter_port()
        self.on_left_out = on_left_out
        self.left_out: dict[str, str] = {}  # applications not in the configuration, and why
        self._rendered: tuple[MeshSnapshot, str] | None = None  # the last render, reused
        self.wake_listener: WakeListener | None = None  # while ``run`` runs
        self._woken: dict[str, float] = {}  # app/service -> when its wake was last sent
        self._wakes: set[asyncio.Task[None]] = set()
        self.wakes_sent = 0
        # the newest reading of what is in flight (``in_flight``), and when it ended
        self._in_flight: asyncio.Task[dict[str, InFlight] | None] | None = None
        self._in_flight_at = 0.0  # when the last reading ended
        self._in_flight_began = 0.0  # when the last reading began

    def _paths(self) -> Paths:
        """The proxy's paths, with the wake listener's URL while it serves."""
        assert self.proxy is not None
        paths = self.proxy.paths()
        if self.wake_listener is None:
            return paths
        return replace(paths, wake_url=self.wake_listener.url)

    def wake(self, cluster: str, held: int) -> bool:
        """The proxy holds ``held`` requests for ``cluster``: tell the server (in the
        background; at most once per service per ``WAKE_EVERY`` s). False: the current
        snapshot has no such cluster scaling to zero."""
        current = self.current.cluster(cluster) if self.current is not None else None
        if current is None or not current.scale_to_zero:
            return False
        port = ClusterName.parse(cluster)
        key = f"{port.app}/{port.service}"
        now = self.clock.monotonic()
        if now - self._woken.get(key, -WAKE_EVERY) < WAKE_EVERY:
            return True
        self._woken[key] = now
        task = asyncio.get_running_loop().create_task(self._send_wake(cluster, held))
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)
        return True

    async def _send_wake(self, cluster: str, held: int) -> None:
        try:
            await self.client().mesh_wake(self.node_id, {cluster: held})
            self.wakes_sent += 1
        except ClientError as e:  # the proxy tells again within a second while it holds
            log.warning("cannot tell the server that %s has held requests: %s", cluster, e)

    @property
    def log_path(self) -> Path:
        return self.dir / "haproxy.log"

    def _exporter_port(self) -> int:
        """The port of HAProxy's Prometheus exporter: chosen once per node from the node's
        ``PortAllocator`` and kept (in the mesh directory), so that agent restarts do not
        change it; chosen again when another process holds the kept one."""
        path = self.dir / "exporter-port"
        what = "the node proxy's metrics exporter"
        try:
            port = int(path.read_text())
        except (OSError, ValueError):
            port = 0
        if port:
            held = self.port_holder(self.EXPORTER_ADDRESS, port) if self.port_holder else None
            if held is None and self.ports.claim(PROXY_OWNER, port, what) is None:
                return port
            log.warning("the proxy's exporter port %d is taken (%s); choosing another", port, held)
        port = self.ports.take(PROXY_OWNER, what)
        with contextlib.suppress(OSError):
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(str(port))
        return port

    EXPORTER_ADDRESS = "127.0.0.1"

    @property
    def _totals_path(self) -> Path:
        return self.dir / "counters.json"

    def _load_totals(self) -> Totals:
        try:
            return Totals.from_data(json.loads(self._totals_path.read_text()))
        except (OSError, ValueError):
            return Totals()

    def _save_totals(self) -> None:
        path = self._totals_path
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.totals.to_data()))
            tmp.replace(path)
        except OSError as e:  # the totals in memory are right; a restart would lose the base
            log.warning("cannot save the mesh's traffic totals to %s: %s", path, e)

    def stats(self) -> Stats:
        """Per-cluster counters of the running proxy as last read (``read_stats``, every
        ``SUPERVISE_SECONDS`` by ``supervise``); empty when none runs."""
        if self.proxy is None or not self.proxy.alive():
            return {}
        return self._stats

    async def read_stats(self, mark: bool = False) -> Stats:
        """Read the running proxy's per-cluster counters now (empty when none runs), as
        totals that count what earlier workers counted too (``Totals``). ``mark``: the
        metrics loop's reading for a report — its raw arrival counters become
        ``reported_arrivals``, what the loop's looks compare with (the supervisor's readings
        in between must not move that starting point)."""
        stats: Stats = {}  # assigned whole: /metrics reads it from another thread
        # one reading at a time (the supervisor's and the one before a reload): answers taken
        # out of order would look like a counter going down, which means a new worker
        async with self._stats_lock:
            if self.proxy is not None and self.proxy.alive():
                try:
                    worker, text = split_info(await self.proxy.command(stats_command(self.current)))
                    answered = self.clock.monotonic()
                except (HaproxyError, OSError):
                    pass
                else:
                    raw = parse_stats(text)
                    if mark:
                        counts = {k: s.requests for k, s in raw.items()}
                        self.reported_arrivals = (worker, counts, answered)
                    stats, moved = self.totals.add(worker, raw)
                    if moved:
                        self._save_totals()
            self._stats = stats
        return stats

    async def arrivals(self) -> tuple[Worker | None, dict[str, int]]:
        """The proxy's raw arrival counters per cluster now (one ``show stat`` of the
        backends, not counted into the totals) and the worker that answered: what the
        metrics loop compares with ``reported_arrivals`` (the same worker's counters at the
        last report) to see the load jump between reports. Empty when no proxy runs."""
        if self.proxy is None or not self.proxy.alive():
            return None, {}
        try:
            worker, text = split_info(await self.proxy.command(ARRIVALS_COMMAND))
        except (HaproxyError, OSError):
            return None, {}
        return worker, {k: s.requests for k, s in parse_stats(text).items()}

    async def serves(self, name: str, port: int) -> bool:
        """Whether the proxy serves the listener ``name`` on ``port`` (it is in the
        configuration it runs) and it accepts a connection now."""
        cur = self.current
        if self.proxy is None or cur is None or not self.proxy.alive():
            return False
        lst = next((x for x in cur.listeners if x.name == name and x.port == port), None)
        if lst is None:
            return False
        try:
            async with asyncio.timeout(1.0):
                _, writer = await asyncio.open_connection(lst.address, lst.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _blocked(self, snap: MeshSnapshot) -> dict[str, tuple[int, str]]:
        """The listeners of ``snap`` that cannot bind, and who holds their port: a port
        another listener of ``snap`` or the exporter uses, or (``port_holder``) one another
        process holds. Listeners the running proxy serves already are not checked."""
        out: dict[str, tuple[int, str]] = {}
        users: dict[int, str] = {}
        if snap.metrics_port:
            users[snap.metrics_port] = "this node proxy's metrics exporter"
        for lst in snap.listeners:
            if lst.port in users:
                out[lst.name] = (lst.port, users[lst.port])
            else:
                users[lst.port] = f"this node proxy's listener {lst.name}"
        served: set[tuple[str, int]] = set()
        assert self.proxy is not None
        if self.current is not None and self.proxy.alive():
            served = {(x.address, x.port) for x in self.current.listeners}
        todo = [
            x for x in snap.listeners if x.name not in out and (x.address, x.port) not in served
        ]
        check = self.port_holder
        if todo and check is not None:

            def held() -> dict[str, tuple[int, str]]:
                found = {x.name: (x.port, check(x.address, x.port)) for x in todo}
                return {name: (port, who) for name, (port, who) in found.items() if who}

            out.update(await asyncio.to_thread(held))
        return out

    async def _serveable(self, full: MeshSnapshot) -> MeshSnapshot:
        """``full`` without what cannot be served: the applications that cannot be rendered
        (``_renderable``) and the listeners whose port is held (``_blocked``)."""
        kept = self._renderable(full)
        blocked = await self._blocked(kept)
        for name, (port, who) in blocked.items():
            if self.listener_failed.get(name) != (port, who):
                log.error(
                    "mesh version %d: listener %s left out of this node's proxy: port %d is "
                    "held by %s; the other listeners are served",
                    full.version,
                    name,
                    port,
                    who,
                )
        for name in set(self.listener_failed) - set(blocked):
            log.warning("mesh version %d: listener %s is served again", full.version, name)
        self.listener_failed = blocked
        if not blocked:
            return kept
        if self.on_listener_failed is not None:
            for lst in kept.listeners:
                if lst.name in blocked:
                    try:
                        self.on_listener_failed(lst, blocked[lst.name][1])
                    except Exception:
                        log.exception("cannot report that listener %s was left out", lst.name)
        listeners = tuple(x for x in kept.listeners if x.name not in blocked)
        return replace(kept, listeners=listeners)

    def _without_failed(self, snap: MeshSnapshot) -> MeshSnapshot:
        """``snap`` without the listeners left out for a held port (the same name and port:
        a listener that moved to another port is new, and checked)."""
        if not self.listener_failed:
            return snap
        failed = self.listener_failed
        listeners = tuple(x for x in snap.listeners if failed.get(x.name, (0, ""))[0] != x.port)
        return replace(snap, listeners=listeners)

    async def _freed(self, full: MeshSnapshot) -> bool:
        """Whether a listener left out for a held port can be served now (its port is
        free); forgets the ones ``full`` no longer has."""
        if not self.listener_failed:
            return False
        wanted = {x.name: x for x in full.listeners}
        self.listener_failed = {
            name: v
            for name, v in self.listener_failed.items()
            if name in wanted and wanted[name].port == v[0]
        }
        check = self.port_holder
        todo = [wanted[name] for name in self.listener_failed]
        if not todo or check is None:
            return False
        return await asyncio.to_thread(lambda: any(check(x.address, x.port) is None for x in todo))

    async def retry_failed_listeners(self) -> bool:
        """Reload with a listener left out for a held port once its port is free; True when
        it did."""
        if not self.listener_failed or self._last_full is None:
            return False
        async with self._lock:
            full = self._last_full
            if self.proxy is None or not self.proxy.alive() or not await self._freed(full):
                return False
            await self._full(await self._serveable(full))
            return True

    def _config(self, snap: MeshSnapshot) -> str:
        assert self.proxy is not None
        if self._rendered is not None and self._rendered[0] is snap:
            return self._rendered[1]
        text = render(snap, self._paths())
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
        return leave_out_unrenderable(alone, self._paths())[2] != self.left_out

    def _renderable(self, snap: MeshSnapshot) -> MeshSnapshot:
        """``snap`` without the applications whose part cannot be rendered (``left_out``);
        logs when an application is left out, and when it is no longer."""
        assert self.proxy is not None
        kept, text, bad = leave_out_unrenderable(snap, self._paths())
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
        if self.proxy.alive():
            await self.read_stats()  # the old worker's counters, up to the reload (Totals)
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
        self._last_full = full
        if not full.listeners and not self.proxy.alive():
            self.current = full
            return "idle"  # nothing to serve yet: do not start a proxy for nothing
        if self.current is None or not self.proxy.alive():
            return await self._full(await self._serveable(full))
        # endpoint churn needs no render of the whole; what was left out is tried alone
        snap = self._without_failed(without(full, set(self.left_out)))
        d = diff(self.current, snap)
        if d.reload or self._left_out_changed(full) or await self._freed(full):
            return await self._full(await self._serveable(full))
        now, later = runtime_commands(d, snap)
        try:
            for cmd in now:
                await self.proxy.command(cmd)
                self.runtime_commands += 1
        except (HaproxyError, OSError) as e:
            log.warning("runtime update failed (%s); reloading instead", e)
            return await self._full(await self._serveable(full))
        self.pending_deletes += later
        self.current = snap
        return "updated" if now else "unchanged"

    async def in_flight(
        self, allocation: str, deadline: float | None = None, since: float | None = None
    ) -> InFlight | None:
        """What this node's proxy still has in flight to the endpoints of ``allocation``
        (their ids are ``<allocation>-<port>``), on every live worker: after a reload the old
        worker still carries the requests it had (``each_worker``); HTTP requests and TCP
        connections apart (``InFlight``). None when the proxy runs but does not say (e.g.
        while it reloads), or not before ``deadline`` (``clock.monotonic()``): not the same
        as nothing in flight.

        Every draining allocation of the node counts from one shared reading
        (``read_in_flight``): one at a time, kept ``IN_FLIGHT_FRESH`` s after it ends, bounded
        by ``IN_FLIGHT_LIMIT`` of its own (not by the deadline of whoever started it); a caller
        takes only a reading that began at ``since`` or later (a drain: once the proxies
        dropped its endpoints — an earlier one may predate a request sent just before) and
        waits for it at most until its own ``deadline``."""
        if self.proxy is None or not self.proxy.alive():
            return InFlight()
        now = self.clock.monotonic()
        left = None if deadline is None else max(deadline - now, 0.0)
        reading = self._in_flight
        stale = (
            reading is None
            or (since is not None and self._in_flight_began < since)
            or (reading.done() and now - self._in_flight_at >= IN_FLIGHT_FRESH)
        )
        if reading is None or stale:
            reading = asyncio.get_running_loop().create_task(self.read_in_flight(IN_FLIGHT_LIMIT))
            self._in_flight, self._in_flight_began = reading, now
        try:
            endpoints = await asyncio.wait_for(asyncio.shield(reading), left)
        except TimeoutError:
            log.info("the proxy did not say in time what is in flight to %s", allocation)
            return None
        return None if endpoints is None else allocation_in_flight(endpoints, allocation)

    def close_in_flight(self) -> None:
        """Cancel a shared in-flight reading under way (the agent stops)."""
        if self._in_flight is not None and not self._in_flight.done():
            self._in_flight.cancel()

    async def read_in_flight(self, timeout: float | None) -> dict[str, InFlight] | None:
        """One reading of what every live worker has in flight, per endpoint (None when the
        proxy does not answer within ``timeout``); ``in_flight`` shares it."""
        assert self.proxy is not None
        try:
            answers = await self.proxy.each_worker(IN_FLIGHT_COMMAND, timeout)
        except (HaproxyError, OSError) as e:
            log.info("cannot count what is in flight on the proxy: %s", e)
            return None
        except Exception:  # shared by every drain: one bug must not break them all
            log.exception("cannot count what is in flight on the proxy")
            return None
        finally:
            self._in_flight_at = self.clock.monotonic()
        return endpoints_in_flight(answers)

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
        listener = WakeListener(self.wake)
        try:
            await listener.start()
        except OSError as e:  # the mesh works; services scaled to zero answer 503 at once
            log.error("cannot serve the proxy's wake listener (%s): no request is held", e)
        else:
            self.wake_listener = listener
        try:
            await self._run()
        finally:
            self.wake_listener = None
            for task in list(self._wakes):
                task.cancel()
            await listener.close()

    async def _run(self) -> None:
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
                await self.retry_failed_listeners()
            except (HaproxyError, OSError) as e:
                log.error("cannot add the listeners whose port is free again: %s", e)
            except Exception:
                log.exception("cannot add the listeners whose port is free again")
            try:
                await self.read_stats()
            except Exception:
                log.exception("cannot read haproxy's counters")
