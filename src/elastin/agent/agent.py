"""The agent's main loop: register the node, watch its allocations, run each through an
``AllocRunner``, heartbeat with measured usage, report metrics every second
(``report_metrics``, ``agent/sampling.py``), and re-attach to running instances after a
restart.

It talks to the server only through a client (``AgentClient``: the calls it makes, which
``elastin.client.AsyncClient`` implements). Reports to the server go through ``Reporter``,
which merges the newest state per allocation and retries while the server is unreachable,
so that a server restart loses nothing.

What should run here is decided by the pure ``elastin.agent.reconcile``; ``Agent.sync``
executes its actions. The client, the DNS and metrics servers and the clock are constructor
arguments (``Agent(cfg, drivers)`` builds the real ones from the configuration), so tests
give it fakes; time comes from the injected ``Clock``.

Failures are confined to the allocation or application that caused them: an unexpected error
while starting, re-attaching or sampling one allocation is logged with its traceback, becomes
an error event on it and fails it (its instance, if one runs, is stopped); the agent's own
loops are run again when they fail (``keep_running``); an application whose mesh part cannot
be rendered is left out of the proxy (an event on its allocations here). Only an error the
agent cannot confine ends ``run``: it logs it and raises ``AgentFailed`` (the commands exit
non-zero).

Ports are handed out by one ``PortAllocator`` for the node (``agent/ports.py``): every
runner's ports and upstream listener ports, the proxy's exporter port, and, after a restart,
the ports of the instances it re-attaches to. An instance starts once its upstream listeners
accept connections on the node's proxy (``upstreams_down``).

The node's HAProxy outlives the agent while instances run here (they survive an agent restart,
and the next agent adopts the proxy); ``run`` stops it on the way out only when none does.

Applications are fetched (``GET /v1/apps/{name}``) when an allocation starts and cached
(``CachedApp``). A change of ``replicas``, ``mesh`` or ``autoscale:`` (``NOT_IN_INSTANCES``)
makes no new version, so nothing in the allocation sync tells the agent of it; of those, the
agent reads only ``autoscale.metrics`` at run time (its instances' application gauges:
``_gauge_workload``; health checks, ports, stop grace and the rest belong to the version).
``refresh_apps`` keeps the applications of its live service instances current: every mesh
version follows each commit of an application (the server rebuilds the mesh from the applied
spec), so an application fetched before the node's mesh version last moved is fetched again —
at most once per ``APP_REFRESH`` s per application, and only while the mesh moves (a quiet
cluster costs no call); without a mesh feed (no HAProxy here) every ``APP_REFRESH_NO_MESH`` s
(``apps_to_refresh``, pure).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from elastin.agent.api import AgentApi, runner_targets
from elastin.agent.drivers.base import Driver, Handle, supervisor_alive
from elastin.agent.gauges import GaugeReader, scrape_timeout
from elastin.agent.gc import (
    GC_INTERVAL,
    AllocDir,
    GcPolicy,
    claim,
    collect,
    disk_used,
    held_by_handles,
)
from elastin.agent.gc import scan as scan_allocs
from elastin.agent.logfiles import Rotation
from elastin.agent.mesh import MeshManager, foreign_holder, keep_running, local_haproxy
from elastin.agent.metrics import AgentView, MetricsServer, ProxyView
from elastin.agent.ports import PortAllocator
from elastin.agent.reconcile import (
    Forget,
    ReportLost,
    ReportStopped,
    Start,
    Stop,
    StopUnknown,
    reconcile,
)
from elastin.agent.runner import UPSTREAM_PREFIX, AllocRunner, resized
from elastin.agent.sampling import (
    BURST_BASELINE,
    BURST_LOOKS,
    DEFAULT_INTERVAL,
    Page,
    build_report,
    burst,
    gauge_pages,
    instance_reading,
    is_ready,
    port_baseline,
    recent_usage,
)
from elastin.client.discovery import running_server
from elastin.client.errors import ApiError, ClientError, ServerUnavailable
from elastin.client.http import AsyncClient
from elastin.clock import SYSTEM, Clock
from elastin.datadir import ensure_private
from elastin.mesh.dns import DnsServer, Target
from elastin.mesh.haproxy.stats import CLEAR_MAX, InFlight
from elastin.mesh.model import Listener, MeshSnapshot
from elastin.mesh.model.traffic import ClusterStats
from elastin.model.cluster import TERMINAL, Allocation, Node, Usage
from elastin.model.codec import from_data
from elastin.model.resources import Resources
from elastin.model.rollout import with_policy_of
from elastin.model.settled import workload_ready
from elastin.model.workload import Application, Workload
from elastin.serving import Limits

log = logging.getLogger("elastin.agent")


class AgentFailed(Exception):
    """The agent stopped on an error it could not confine (logged with its traceback)."""


HEARTBEAT_INTERVAL = 5.0
# how often every instance's logs are checked against their cap (an fstat each): a log can
# pass its cap by what its workload writes in this long, no more
LOG_CHECK_SECONDS = 1.0
LOOP_GIVE_UP = 10  # failures in a row (about 3 min) before a vital loop stops the agent
LOW_DISK_GC_INTERVAL = 5.0  # seconds between collections while the data disk is low
# seconds an instance being stopped waits for every proxy to confirm it dropped it; the wait
# for the requests still in flight to it is then bounded by its workload's ``stop_grace``,
# the wait for the connections open to its TCP ports by this again (``Agent.drain``)
DRAIN_CONFIRM = 5.0
DRAIN_POLL = 0.05  # seconds between two counts of the requests in flight
# an application is fetched at most once per APP_REFRESH seconds (also when the fetch fails);
# its instances' spec as applied is fetched again once the node's mesh version moved past
# the fetch (``apps_to_refresh``), or every APP_REFRESH_NO_MESH seconds without a mesh feed;
# which ones are due is checked every APP_REFRESH_CHECK seconds
APP_REFRESH = 5.0
APP_REFRESH_NO_MESH = 15.0
APP_REFRESH_CHECK = 1.0


@dataclass(frozen=True)
class CachedApp:
    """An application as the agent last fetched it (``GET /v1/apps/{name}``)."""

    app: Application
    versions: dict[str, int]  # workload -> its current spec version
    fetched: float  # the agent's ``clock.monotonic()`` when the fetch began
    mesh_version: int | None  # the node's mesh version then (None: no mesh feed)


def apps_to_refresh(
    wanted: Iterable[str],
    cached: Mapping[str, CachedApp],
    tried: Mapping[str, float],
    mesh_version: int | None,
    now: float,
) -> list[str]:
    """Which of the ``wanted`` applications (those of the node's live service instances) to
    fetch again now, sorted. ``tried``: when each was last asked for (``now`` is on the same
    monotonic clock); ``mesh_version``: the version the node's proxy serves (None: no mesh
    feed here).

    None is fetched twice within ``APP_REFRESH`` s, a failed fetch included. One not cached is
    due. With a mesh feed, one fetched at another mesh version than the node's now is due:
    every commit of an application (``apply``, ``scale``, ``stop``) moves the mesh version,
    and the record is committed before the version moves, so a fetch begun after the move
    reads it; an allocation's report moves it too, which costs a fetch at most every
    ``APP_REFRESH`` s while the mesh is busy, none while it is quiet. Without a feed, one
    fetched ``APP_REFRESH_NO_MESH`` s ago is due."""
    due = []
    for name in sorted(set(wanted)):
        last = tried.get(name)
        if last is not None and now - last < APP_REFRESH:
            continue
        c = cached.get(name)
        if (
            c is None
            or (mesh_version is not None and c.mesh_version != mesh_version)
            or (mesh_version is None and now - c.fetched >= APP_REFRESH_NO_MESH)
        ):
            due.append(name)
    return due


@dataclass
class AgentConfig:
    data_dir: Path
    server_url: str
    token: str
    name: str = field(default_factory=socket.gethostname)
    reserve: Resources = field(default_factory=lambda: Resources(0, 256 * 1024 * 1024, 0))
    rediscover: bool = False  # re-read the local server's address when it stops answering
    mesh: bool = True  # run this node's HAProxy (when installed)
    dns_port: int | None = 0  # the DNS interface on 127.0.0.1 (0: any free port; None: off)
    metrics_port: int | None = 0  # the agent's /metrics on 127.0.0.1 (0: any free port; None: off)
    api_host: str = "127.0.0.1"  # the agent's API (logs, relayed by the server): an IP literal
    api_port: int = 0  # 0: any free port
    api_limits: Limits | None = None  # None: from ELASTIN_API_* (elastin.serving)
    # allocation directories the agent no longer knows are removed after this long idle
    # (sooner when the data disk is used above gc_disk_threshold): elastin.agent.gc
    gc_retention: float = 4 * 3600.0
    gc_disk_threshold: float = 0.8
    # seconds between metrics reports to the server's memory (cpu, memory, the proxy's
    # request rates; elastin.agent.sampling); 0: none (the heartbeat samples alone)
    metrics_interval: float = DEFAULT_INTERVAL


def memory_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover


def fingerprint(cfg: AgentConfig, node_id: str, drivers: dict[str, Driver]) -> Node:
    cpus = len(os.sched_getaffinity(0))
    disk = shutil.disk_usage(cfg.data_dir).free
    capacity = Resources(cpus * 1000, memory_total(), disk) - cfg.reserve
    attrs: dict[str, str] = {
        "kernel.name": os.uname().sysname.lower(),
        "kernel.release": os.uname().release,
        "cpu.cores": str(cpus),
    }
    names, cgv = [], ""
    for name, d in drivers.items():
        info = d.fingerprint()
        if info.available:
            names.append(name)
            cgv = cgv or info.attributes.get("cgroup.version", "")
        attrs.update({f"driver.{name}.{k}": v for k, v in info.attributes.items()})
        attrs[f"driver.{name}"] = "1" if info.available else f"0 ({info.reason})"
    return Node(
        id=node_id,
        name=cfg.name,
        address="127.0.0.1",
        capacity=Resources(max(capacity.cpu, 0), max(capacity.memory, 0), max(capacity.disk, 0)),
        drivers=tuple(sorted(names)),
        cgroup_version=cgv,
        attributes=tuple(sorted(attrs.items())),
    )


@runtime_checkable
class LogCapping(Protocol):
    """A driver that keeps its instances' logs within a size (the task driver)."""

    def rotate_logs(self, handle: Handle) -> list[Rotation]: ...


class ReportClient(Protocol):
    async def allocs_status(self, reports: dict[str, dict[str, Any]]) -> dict[str, str]: ...


class AgentClient(ReportClient, Protocol):
    """The server's API as the agent uses it (``elastin.client.AsyncClient`` implements it).
    Every call raises ``elastin.client.errors.ClientError`` (``ServerUnavailable``,
    ``ApiError``) when it fails."""

    url: str

    async def close(self) -> None: ...

    async def call(
        self, method: str, path: str, timeout: float | None = None, **kw: Any
    ) -> Any: ...

    async def register(self, node: Node) -> Node: ...

    async def heartbeat(
        self,
        node_id: str,
        usage: dict[str, Usage],
        node_usage: Usage | None,
        mesh: dict[str, Any] | None = None,
    ) -> Any: ...

    async def node_allocations(
        self, node_id: str, index: int, wait: float
    ) -> tuple[list[Allocation], int]: ...

    async def allocations(self, app: str) -> list[Allocation]: ...

    async def mesh_converged(self, version: int, wait: float) -> list[str]: ...

    def mesh_stream(self, node_id: str, quiet: float = 60.0) -> AsyncIterator[MeshSnapshot]: ...

    async def mesh_ack(self, node_id: str, version: int) -> None: ...

    async def mesh_wake(self, node_id: str, held: dict[str, int]) -> object: ...

    async def node_metrics(self, node_id: str, report: dict[str, Any]) -> None: ...


def connect_server(url: str, token: str) -> AgentClient:
    """The real client of the server at ``url``."""
    return AsyncClient(url, token)


class Reporter:
    """Sends allocation reports; keeps the newest per allocation and retries until sent
    (every ``RETRY`` seconds while the server is away or answers with a server error, e.g.
    a 500 when its disk is full). A report the server refuses (4xx) is dropped; a batch it
    finds too large (413) is sent again in halves."""

    RETRY = 1.0
    BATCH = 256  # allocations per request at most (the API refuses bodies over 4 MiB)

    def __init__(self, client: Callable[[], ReportClient], clock: Clock = SYSTEM) -> None:
        self.client = client
        self.clock = clock
        self.pending: dict[str, dict[str, Any]] = {}
        self.wake = asyncio.Event()
        self.batch = self.BATCH  # halved while the server says a batch is too large

    def report(self, alloc_id: str, **fields: Any) -> None:
        cur = self.pending.setdefault(alloc_id, {})
        events = cur.pop("events", []) + list(fields.pop("events", []))
        cur.update(fields)
        if events:
            cur["events"] = events
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            await self.flush()

    def _put_back(self, batch: dict[str, dict[str, Any]]) -> None:
        """Keep a batch that was not taken, merged under what was reported since (newer
        fields win, events stay in order)."""
        for alloc_id, body in batch.items():
            newer = self.pending.pop(alloc_id, {})
            events = body.pop("events", []) + newer.pop("events", [])
            body.update(newer)
            if events:
                body["events"] = events
            self.pending[alloc_id] = body

    async def flush(self) -> None:
        while self.pending:
            batch = {k: self.pending.pop(k) for k in list(self.pending)[: self.batch]}
            try:
                results = await self.client().allocs_status(batch)
            except ApiError as e:
                if e.status == 413 and len(batch) > 1:  # too large: send halves
                    self.batch = max(1, len(batch) // 2)
                    self._put_back(batch)
                    continue
                if e.status < 500 and e.status not in (408, 429):
                    log.warning("reports not taken: %s", e.message)  # refused: final
                    continue
                # the server failed (e.g. its disk is full): keep them and retry shortly
                log.warning("reports not taken yet (retrying): %s", e.message)
                self._put_back(batch)
                await self.clock.sleep(self.RETRY)
                continue
            except ClientError:
                # server away: put them back (newer reports win) and retry shortly
                self._put_back(batch)
                await self.clock.sleep(self.RETRY)
                continue
            self.batch = min(self.BATCH, self.batch * 2)
            for alloc_id, result in results.items():
                if result != "ok":
                    # deleted, or the server moved it on (e.g. lost): final either way
                    log.info("report on %s not taken: %s", alloc_id, result)


class Agent:
    """One node's agent. ``client``, ``dns`` and ``metrics`` default to the real ones the
    configuration asks for (``connect`` builds a client, also when the server moves);
    ``clock`` is the time every wait and timestamp of the agent and its runners uses."""

    def __init__(
        self,
        cfg: AgentConfig,
        drivers: dict[str, Driver],
        *,
        client: AgentClient | None = None,
        connect: Callable[[str, str], AgentClient] = connect_server,
        dns: DnsServer | None = None,
        metrics: MetricsServer | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.cfg = cfg
        self.drivers = drivers
        self.clock = clock
        self.connect = connect
        self.client: AgentClient = (
            client if client is not None else connect(cfg.server_url, cfg.token)
        )
        self.reporter = Reporter(lambda: self.client, clock)
        self.runners: dict[str, AllocRunner] = {}
        # allocations with a handle on disk that ``recover`` could not re-attach to: an
        # instance of theirs may run, so they are never started again (``reconcile``)
        self.unattached: set[str] = set()
        self.ports = PortAllocator()  # every port handed out on this node, given out once
        # the data directory is root's alone (a standalone agent's too): instances reach
        # their own directory through their mount namespace (agent/drivers/sandbox.py)
        ensure_private(cfg.data_dir)
        self.state_dir = cfg.data_dir / "agent" / "handles"
        self.alloc_root = cfg.data_dir / "allocs"
        self.node_id = self._node_id()
        self.node: Node | None = None
        self._apps: dict[str, CachedApp] = {}  # applications as last fetched (``_fetch_app``)
        self._app_tried: dict[str, float] = {}  # application -> when it was last asked for
        self._tg: asyncio.TaskGroup | None = None
        self.mesh: MeshManager | None = None
        if metrics is None and cfg.metrics_port is not None:
            metrics = MetricsServer(self.metrics_view, port=cfg.metrics_port)
        self.metrics: MetricsServer | None = metrics
        if dns is None and cfg.dns_port is not None:
            dns = DnsServer(self.dns_lookup, port=cfg.dns_port)
        self.dns: DnsServer | None = dns
        self.api = AgentApi(
            self.alloc_root,
            cfg.data_dir / "mesh" / "haproxy.log",
            cfg.token,
            host=cfg.api_host,
            port=cfg.api_port,
            limits=cfg.api_limits,
            exec_target=runner_targets(self.runners),  # `elastin exec` (agent/api.py)
        )
        self.node_env: dict[str, str] = {}  # what every instance here gets (ELASTIN_DNS)
        self.log_dropped_bytes = 0  # log bytes truncated without a copy (a full disk)
        self.allocs_collected = 0  # allocation directories garbage-collected
        # mesh events told once (``forget_told`` drops what is over): (allocation, app, why)
        # and (listener, port, holder)
        self._left_out_told: set[tuple[str, str, str]] = set()
        self._listener_told: set[tuple[str, int, str]] = set()

    def dns_lookup(self, service: str, app: str | None, port: str | None) -> list[Target] | None:
        """Ready endpoints of ``service`` from the mesh snapshot this node's proxy serves."""
        snap = self.mesh.current if self.mesh is not None else None
        if snap is None:
            return None
        seen: set[str] = set()  # apps whose service matched (the first port of each)
        targets: list[Target] = []
        for c in snap.clusters:
            try:
                name = c.service_port
            except ValueError:
                continue  # not a service port: nothing DNS can name
            if name.service != service or (app is not None and name.app != app):
                continue
            if name.app in seen or (port is not None and name.port != port):
                continue
            seen.add(name.app)
            targets += [Target(e.address, e.port, e.node) for e in c.endpoints if e.ready]
        return targets if seen else None

    def metrics_view(self) -> AgentView:
        """What the agent's ``/metrics`` reports now: its instances, its proxy, and the mesh's
        traffic per service as this node's proxy sees it. Called in the metrics server's
        thread (reads only; asking the proxy for its counters does not block the loop)."""
        runners = list(self.runners.values())
        counts: dict[str, int] = {}
        for r in runners:
            counts[r.state.status] = counts.get(r.state.status, 0) + 1
        restarts = sum(r.state.restarts for r in runners)
        m = self.mesh
        disk = {"log_dropped": self.log_dropped_bytes, "collected": self.allocs_collected}
        if m is None or m.proxy is None:
            return AgentView(counts, restarts, disk=disk)
        current = m.current
        proxy = ProxyView(
            up=m.proxy.alive(),
            version=current.version if current else 0,
            reloads=m.proxy.reloads,
            starts=m.proxy.starts,
            runtime_commands=m.runtime_commands,
            exporter_port=m.exporter_port,
            traffic=m.stats(),
        )
        return AgentView(counts, restarts, proxy, disk=disk)

    def _node_id(self) -> str:
        path = self.cfg.data_dir / "agent" / "node-id"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            return path.read_text().strip()
        nid = uuid.uuid4().hex[:12]
        path.write_text(nid)
        return nid

    async def register(self) -> Node:
        node = fingerprint(self.cfg, self.node_id, self.drivers)
        attrs = dict(node.attributes)
        attrs["agent.api"] = self.api.address
        if self.metrics is not None:
            attrs["agent.metrics"] = self.metrics.address
        if self.dns is not None:
            attrs["agent.dns"] = f"{self.dns.host}:{self.dns.port}"
        node = replace(node, attributes=tuple(sorted(attrs.items())))
        delay = 0.2
        for _ in range(10**6):
            try:
                self.node = await self.client.register(node)
                return self.node
            except ClientError as e:
                log.warning("cannot register with the server yet: %s", e.message)
                await self.clock.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise RuntimeError("unreachable")  # pragma: no cover

    def _mesh_version(self) -> int | None:
        """The mesh version this node's proxy serves (None: no mesh feed here, or none yet)."""
        m = self.mesh
        if m is None or m.proxy is None or m.current is None:
            return None
        return m.current.version

    async def _fetch_app(self, name: str) -> CachedApp:
        """Application ``name`` as applied now, cached with when and at which mesh version
        the fetch began. ``ClientError`` when the server cannot say."""
        began, mesh_version = self.clock.monotonic(), self._mesh_version()
        self._app_tried[name] = began
        data = await self.client.call("GET", f"/v1/apps/{name}")
        versions = {str(k): int(v) for k, v in data["versions"].items()}
        cached = CachedApp(from_data(Application, data["app"]), versions, began, mesh_version)
        self._apps[name] = cached
        return cached

    async def _application(self, alloc: Allocation) -> tuple[Application, dict[str, int]]:
        """``alloc``'s application as applied and its spec versions, cached for
        ``APP_REFRESH`` seconds (fetched again when ``alloc`` runs another version than the
        cached one: a rollback or an undo makes an older version current again).
        ``ClientError`` when the server cannot say."""
        cached = self._apps.get(alloc.app)
        if (
            cached is None
            or self.clock.monotonic() - cached.fetched > APP_REFRESH
            or cached.versions.get(alloc.workload, 0) != alloc.spec_version
        ):
            cached = await self._fetch_app(alloc.app)
        return cached.app, cached.versions

    async def workload(self, alloc: Allocation) -> Workload | None:
        """The workload spec an allocation runs (None when it is not available)."""
        try:
            app, versions = await self._application(alloc)
        except ClientError:
            return None
        if versions.get(alloc.workload) != alloc.spec_version:
            return None
        return app.workload(alloc.workload)

    async def deps_ready(self, alloc: Allocation, w: Workload) -> str:
        if not w.depends_on:
            return ""
        try:
            allocs = await self.client.allocations(alloc.app)
            app, _ = await self._application(alloc)
        except ClientError as e:
            return f"waiting for the server to check dependencies: {e.message}"
        waiting = [
            dep
            for dep in w.depends_on
            if (dw := app.workload(dep)) is not None and not workload_ready(dw, allocs)
        ]
        return f"waiting for dependencies: {', '.join(waiting)}" if waiting else ""

    async def upstreams_down(
        self, alloc: Allocation, w: Workload, ports: Mapping[str, int]
    ) -> list[str]:
        """The upstream listeners of ``alloc`` that this node's proxy does not serve yet
        (in the snapshot it serves and accepting connections), as "api (127.0.0.1:21234)".
        Empty without a proxy on this node, and for an upstream that gets no listener (a
        workload without ports)."""
        m = self.mesh
        if m is None or m.proxy is None:
            return []
        try:
            app: Application | None = (await self._application(alloc))[0]
        except ClientError:
            app = None  # cannot tell which upstreams get a listener: wait for all
        down = []
        for up in w.upstreams:
            target = app.workload(up) if app is not None else None
            if app is not None and (target is None or not target.ports):
                continue  # no listener for it (nothing to call)
            port = ports.get(UPSTREAM_PREFIX + up)
            if port and not await m.serves(f"{alloc.id}.{up}", port):
                down.append(f"{up} (127.0.0.1:{port})")
        return down

    async def previous_failure(self, alloc: Allocation) -> str:
        """Why the latest failed run of ``alloc``'s job version ended ("" when unknown)."""
        try:
            allocs = await self.client.allocations(alloc.app)
        except ClientError:
            return ""
        failed = [
            a
            for a in allocs
            if a.workload == alloc.workload
            and a.spec_version == alloc.spec_version
            and a.id != alloc.id
            and a.status == "failed"
        ]
        return max(failed, key=lambda a: a.updated_at).reason if failed else ""

    def _runner(self, alloc: Allocation, w: Workload | None) -> AllocRunner:
        driver = self.drivers.get(alloc.kind)
        assert driver is not None
        return AllocRunner(
            alloc,
            w,
            driver,
            alloc_root=self.alloc_root,
            state_dir=self.state_dir,
            report=self.reporter.report,
            deps_ready=self.deps_ready,
            drain=self.drain,
            node_env=self.node_env,
            clock=self.clock,
            ports=self.ports,
            upstreams_down=self.upstreams_down,
            previous_failure=self.previous_failure,
        )

    async def recover(self, tg: asyncio.TaskGroup) -> None:
        """Re-attach to instances a previous agent process started."""
        if not self.state_dir.exists():
            return
        for path in sorted(self.state_dir.glob("*.json")):
            loaded = AllocRunner.load_handle(path)
            if loaded is None:  # kept, it would hold the proxy and its directory forever
                bad = path.with_suffix(".bad")
                with contextlib.suppress(OSError):
                    path.replace(bad)
                log.warning("cannot read the instance handle %s: set aside as %s", path, bad)
                self.unattached.add(path.stem)  # named for its allocation
                continue
            handle, alloc, restarts, ports = loaded
            if alloc.kind not in self.drivers:
                self.unattached.add(alloc.id)
                continue
            try:
                w = await self.workload(alloc)
                runner = self._runner(replace(alloc, restarts=restarts), w)
            except Exception as e:
                # its instance keeps running: the next agent (or a fix) may re-attach to it
                self.agent_error(alloc, "re-attaching to it", e)
                self.unattached.add(alloc.id)
                continue
            runner.ports = ports
            for conflict in runner.reserve_ports(None):  # its ports stay its own
                log.warning("%s, re-attached: %s", alloc.name, conflict)
            runner.state.restarts = restarts
            self.runners[alloc.id] = runner
            tg.create_task(self._run_runner(runner, handle))
            log.info("re-attaching to %s (pid %d)", alloc.name, handle.pid)

    async def drain(self, alloc: Allocation, version: int, grace: float) -> str:
        """Wait until every live proxy has dropped ``alloc``'s endpoints (the server's mesh
        ``version`` that stopped it; at most ``DRAIN_CONFIRM``), then until this node's proxy
        has finished what it had sent there, on every worker: its HTTP, HTTP/2 and gRPC
        requests for at most ``grace`` (the workload's ``stop_grace``; SIGTERM then gets its
        own), its TCP connections for at most ``DRAIN_CONFIRM`` of that (an idle pooled
        connection stays open until the server closes it: on SIGTERM). Says what happened."""
        try:
            pending = await self.client.mesh_converged(version, DRAIN_CONFIRM)
        except ClientError as e:
            return f"could not confirm that the proxies dropped it ({e.message}); stopping"
        if pending:
            return (
                f"the proxies of {', '.join(pending)} did not confirm within "
                f"{DRAIN_CONFIRM:g}s that they dropped it; stopping"
            )
        start = self.clock.monotonic()
        deadline = start + grace
        tcp_wait = min(DRAIN_CONFIRM, grace)
        busy: InFlight | None = InFlight()
        known: InFlight | None = None  # the last count the proxy gave
        while self.mesh is not None:
            # a reading from before the proxies dropped it may miss a request sent just
            # before: only one that began since counts (``since``)
            busy = await self.mesh.in_flight(alloc.id, deadline, since=start)
            known = busy if busy is not None else known  # None: the proxy does not say
            now = self.clock.monotonic()
            tcp_over = now >= start + tcp_wait
            if busy is not None and not busy.requests and (tcp_over or not busy.connections):
                break
            if now >= deadline:
                break
            await self.clock.sleep(min(DRAIN_POLL, deadline - now))
        busy = busy if busy is not None else known  # the last word it said, if any
        if busy is None:
            return (
                f"out of every proxy; this node's proxy did not say within {grace:g}s what "
                "it still has in flight to it (see the agent's log); stopping"
            )
        said = "out of every proxy, no request in flight"
        if busy.requests:
            said = f"out of every proxy; {busy.requests} request(s) still in flight after "
            said += f"{grace:g}s"
        if busy.connections:
            said += (
                f"; {busy.connections} TCP connection(s) still open, waited for at most "
                f"{tcp_wait:g}s (an idle pooled one stays open until the instance closes it)"
            )
        return said if busy.requests else said + "; stopping"

    async def sync(self, tg: asyncio.TaskGroup, allocs: list[Allocation], index: int = 0) -> None:
        """Execute what ``reconcile`` decides for the allocations the server sent."""
        runners = {alloc_id: r.done.is_set() for alloc_id, r in self.runners.items()}
        for action in reconcile(allocs, runners, self.drivers.keys(), index, self.unattached):
            match action:
                case Start(alloc=a):
                    try:
                        runner = self._runner(a, await self.workload(a))
                    except Exception as e:
                        self.agent_error(a, "preparing to start it", e, fail=True)
                        continue
                    self.runners[a.id] = runner
                    tg.create_task(self._run_runner(runner))
                case Stop(alloc_id=alloc_id, drain_after=drain_after):
                    self.runners[alloc_id].request_stop(drain_after=drain_after)
                case ReportStopped(alloc_id=alloc_id, reason=reason):
                    self.reporter.report(alloc_id, status="stopped", reason=reason)
                case ReportLost(alloc_id=alloc_id, reason=reason):
                    self.reporter.report(alloc_id, status="failed", reason=reason)
                case Forget(alloc_id=alloc_id):
                    del self.runners[alloc_id]
                case StopUnknown(alloc_id=alloc_id, reason=reason):
                    self.runners[alloc_id].request_stop(reason)
        live = {i: r.alloc.resources for i, r in self.runners.items() if not r.done.is_set()}
        for alloc_id, resources in resized(allocs, live):  # in place (``AllocRunner.resize``)
            tg.create_task(self.runners[alloc_id].resize(resources))
        self.forget_told()

    def forget_told(self) -> None:
        """Forget the mesh events told about what is over: an application no longer left
        out (or for another reason), a listener served again (or on another port, or held by
        another process), an allocation forgotten. Each is told again if it happens again;
        and the sets stay as small as what is wrong now."""
        mesh = self.mesh
        left_out = mesh.left_out if mesh is not None else {}
        failed = mesh.listener_failed if mesh is not None else {}
        self._left_out_told = {
            (alloc_id, app, why)
            for alloc_id, app, why in self._left_out_told
            if alloc_id in self.runners and left_out.get(app) == why
        }
        self._listener_told = {
            (name, port, holder)
            for name, port, holder in self._listener_told
            if name.split(".", 1)[0] in self.runners and failed.get(name) == (port, holder)
        }

    def agent_error(
        self, alloc: Allocation, doing: str, e: BaseException, fail: bool = False
    ) -> None:
        """An unexpected error of the agent's own about ``alloc``: logged with its traceback,
        an error event on the allocation, and (``fail``) the allocation reported failed."""
        why = f"agent error while {doing}: {type(e).__name__}: {e}"
        log.error("%s: %s", alloc.name, why, exc_info=e)
        fields: dict[str, Any] = {"status": "failed", "reason": why} if fail else {}
        event = ("alloc.agent_error", alloc.label, f"{why} (traceback in the agent's log)", "error")
        self.reporter.report(alloc.id, events=[event], **fields)

    async def _run_runner(self, runner: AllocRunner, recovered: Handle | None = None) -> None:
        """``runner.run``, confined: whatever escapes it fails that allocation alone, and an
        instance a failed runner leaves behind is stopped (nothing would supervise it)."""
        try:
            await runner.run(recovered)
        except Exception as e:
            final = runner.state.status in TERMINAL
            if not final:
                runner.state.status = "failed"
            self.agent_error(runner.alloc, "running it", e, fail=not final)
            runner.done.set()
        if runner.state.status == "failed" and runner.handle is not None:
            handle, runner.handle = runner.handle, None
            try:
                await runner.driver.stop(handle, 5.0)
                await runner.driver.cleanup(handle)
                runner.forget_handle()
                log.warning(
                    "%s: stopped its instance (pid %d) after the agent error",
                    runner.alloc.name,
                    handle.pid,
                )
            except Exception as e:
                log.error(
                    "%s: cannot stop its instance (pid %d) after the agent error: %s",
                    runner.alloc.name,
                    handle.pid,
                    e,
                )

    async def watch_allocations(self, tg: asyncio.TaskGroup) -> None:
        index = 0
        while True:
            try:
                allocs, index = await self.client.node_allocations(self.node_id, index, 30.0)
            except ClientError as e:
                log.warning("cannot fetch allocations: %s", e.message)
                await self.clock.sleep(1.0)
                if isinstance(e, ServerUnavailable):
                    await self.rediscover()
                if isinstance(e, ApiError) and e.status == 404:
                    await self.register()
                continue
            await self.sync(tg, allocs, index)

    async def rediscover(self) -> None:
        """A local server restarted on another address: follow it (``server.json``)."""
        if not self.cfg.rediscover:
            return
        found = running_server(self.cfg.data_dir)
        if found is None or found[0] == self.client.url:
            return
        log.warning("the server moved to %s; following it", found[0])
        old, self.client = self.client, self.connect(found[0], self.cfg.token)
        self.cfg.server_url = found[0]
        with contextlib.suppress(Exception):
            await old.close()

    async def heartbeat(self) -> None:
        while True:
            usage: dict[str, Usage] = {}
            for alloc_id, runner in list(self.runners.items()):
                try:
                    u = self._recent_usage(runner) or await runner.sample()
                except Exception:  # a bug in one driver's sampling: the others go on
                    log.exception("cannot sample %s", runner.alloc.name)
                    continue
                if u is not None:
                    usage[alloc_id] = u
            total = Usage(
                cpu=sum(u.cpu for u in usage.values()),
                memory=sum(u.memory for u in usage.values()),
                sampled_at=self.clock.time(),
            )
            mesh = self.mesh.stats() if self.mesh is not None else {}  # read every second
            try:
                await self.client.heartbeat(self.node_id, usage, total, mesh)
            except ApiError as e:
                if e.status == 404:
                    await self.register()
            except ClientError as e:
                log.warning("heartbeat failed: %s", e.message)
            await self.clock.sleep(HEARTBEAT_INTERVAL)

    def _recent_usage(self, runner: AllocRunner) -> Usage | None:
        """The metrics loop's last sample of ``runner``'s instance while that loop runs (a
        driver's cpu is an average since the previous sample: two loops sampling a moment
        apart would each get a meaningless one); None: sample now."""
        interval = self.cfg.metrics_interval
        if interval <= 0:
            return None
        running = runner.handle is not None
        return recent_usage(runner.state.usage, running, self.clock.time(), 3 * interval)

    async def report_metrics(self) -> None:
        """Every ``metrics_interval`` seconds: each instance's cpu, memory, requests and
        readiness (and application gauges, ``agent/gauges.py``) and the proxy's counters per
        service port, to the server's memory (``elastin.agent.sampling``). Apart from the
        heartbeat, which writes the node's liveness to the store; a report the server refuses
        is said once, not every second."""
        reader = GaugeReader(self.clock)  # the instances' application gauges
        try:
            await self._metrics_loop(reader)
        finally:
            await reader.close()

    def _gauge_workload(self, runner: AllocRunner) -> Workload | None:
        """``runner``'s workload for its application gauges: its own version's spec with the
        policies of the application as last fetched (``with_policy_of``: an ``autoscale:``
        change makes no new version, so the runner's copy may be older; ``refresh_apps``
        keeps the fetched one current). The policy applies to every version of the service,
        the ports it names are the instance's own (a port its version lacks is not read)."""
        w = runner.workload
        cached = self._apps.get(runner.alloc.app)
        now = cached.app.workload(runner.alloc.workload) if cached is not None else None
        if w is None or now is None:
            return w
        return with_policy_of(w, now)

    async def keep_apps_fresh(self) -> None:
        """Every ``APP_REFRESH_CHECK`` seconds, ``refresh_apps``."""
        while True:
            await self.clock.sleep(APP_REFRESH_CHECK)
            await self.refresh_apps()

    async def refresh_apps(self) -> list[str]:
        """Fetch again the applications of this node's live service instances that
        ``apps_to_refresh`` finds due (one at a time; a failure waits ``APP_REFRESH`` s), and
        forget those no runner here belongs to. Returns the ones fetched."""
        held = {r.alloc.app for r in self.runners.values()}
        for name in [n for n in self._apps if n not in held]:
            del self._apps[name]
        for name in [n for n in self._app_tried if n not in held]:
            del self._app_tried[name]
        wanted = {
            r.alloc.app
            for r in self.runners.values()
            if r.alloc.type == "service" and not r.done.is_set()
        }
        now = self.clock.monotonic()
        fetched = []
        for name in apps_to_refresh(wanted, self._apps, self._app_tried, self._mesh_version(), now):
            try:
                await self._fetch_app(name)
            except ClientError as e:  # the server away or the app deleted: tried again later
                log.debug("cannot fetch application %s again: %s", name, e.message)
                continue
            fetched.append(name)
        return fetched

    async def _metrics_loop(self, reader: GaugeReader) -> None:
        interval = self.cfg.metrics_interval
        told = ""
        series = secrets.token_hex(8)  # this loop's: the server starts a new series with it
        jumped: list[str] = []  # ports whose load jumped: this report goes early
        # the last readings of the proxy (monotonic time, totals): the baseline of a jump
        readings: collections.deque[tuple[float, Mapping[str, ClusterStats]]] = collections.deque(
            maxlen=BURST_BASELINE + 1
        )
        while True:
            started = self.clock.monotonic()
            sampled: dict[str, tuple[Allocation, Usage, bool]] = {}
            pages: dict[str, tuple[Page, ...]] = {}
            for alloc_id, runner in list(self.runners.items()):
                try:
                    u = await runner.sample()
                except Exception:  # a bug in one driver's sampling: the others go on
                    log.exception("cannot sample %s", runner.alloc.name)
                    continue
                if u is None:
                    continue
                st = runner.state
                ready = is_ready(runner.alloc, runner.workload, st.status, st.healthy)
                sampled[alloc_id] = (runner.alloc, u, ready)
                w = self._gauge_workload(runner) if ready else None
                if w is not None and w.autoscale and (found := gauge_pages(w, runner.ports)):
                    pages[alloc_id] = found
            gauges: dict[str, dict[str, float]] = {}
            try:  # bounded by the timeout; a failure leaves gauges out, never the report
                gauges = await reader.read(pages, scrape_timeout(interval))
            except Exception:
                log.exception("cannot read the application gauges")
            instances = {
                alloc_id: instance_reading(alloc, u, ready, gauges.get(alloc_id))
                for alloc_id, (alloc, u, ready) in sampled.items()
            }
            mesh = {}
            if self.mesh is not None and self.mesh.proxy is not None:
                mesh = await self.mesh.read_stats(mark=True)
                if mesh:  # the longest response of the next interval, from now on
                    with contextlib.suppress(Exception):
                        await self.mesh.proxy.command(CLEAR_MAX)
            mono = self.clock.monotonic()
            report = build_report(
                self.clock.time(), interval, instances, mesh, mono, series, jumped
            )
            try:
                await self.client.node_metrics(self.node_id, report)
                told = ""
            except ClientError as e:
                if e.message != told:  # 404 before the first heartbeat, 413: said once
                    log.warning("metrics report not taken: %s", e.message)
                    told = e.message
            readings.append((mono, mesh))
            baseline = port_baseline(readings)
            jumped = await self._until_next_report(started + interval, baseline)

    async def _until_next_report(
        self, deadline: float, baseline: Mapping[str, tuple[float, float]]
    ) -> list[str]:
        """Wait until ``deadline`` (monotonic) for the next metrics report, looking at the
        proxy's arrival counters ``BURST_LOOKS`` times meanwhile; the ports whose load
        jumped since the report's reading (``MeshManager.reported_arrivals``, timed when the
        proxy answered: not after the processing and the report that followed it;
        ``sampling.burst``) as soon as one did: report now."""
        step = max(0.1, self.cfg.metrics_interval / BURST_LOOKS)
        while (now := self.clock.monotonic()) < deadline - 0.05:
            await self.clock.sleep(min(step, deadline - now))
            mesh = self.mesh
            if mesh is None or not baseline or deadline - self.clock.monotonic() < 0.05:
                continue
            worker, before, read_at = mesh.reported_arrivals
            looked, counts = await mesh.arrivals()
            if looked is None or looked != worker:
                continue  # another worker since the report: its counters start again
            if jumped := burst(before, baseline, counts, self.clock.monotonic() - read_at):
                log.debug("load jumped on %s: reporting now", ", ".join(jumped))
                return jumped
        await self.clock.sleep(max(0.0, deadline - self.clock.monotonic()))
        return []

    async def run(self) -> None:
        """Run until cancelled. Instances keep running when the agent stops, and so does the
        node's HAProxy while any does (the next agent adopts both). ``OSError`` when its
        environment does not let it run (a path, a port); ``AgentFailed`` (logged with the
        traceback) when it must stop on an error it could not confine."""
        try:
            self.alloc_root.mkdir(parents=True, exist_ok=True)
            await self._run()
        except OSError as e:  # its environment (a path, a port): the command says what
            log.error("the agent cannot run: %s", e)
            raise
        except Exception as e:
            log.critical(
                "the agent stopped on an internal error; its instances keep running",
                exc_info=e,
            )
            raise AgentFailed(f"{type(e).__name__}: {e}") from e
        finally:
            self.stop_mesh_if_idle()

    async def _run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._close_client)
            await self.api.start()  # the agent's API: logs, relayed by the server
            stack.push_async_callback(self.api.close)
            if self.metrics is not None:
                await self.metrics.start()
                stack.push_async_callback(self.metrics.close)
            if self.dns is not None:
                await self.dns.start()
                stack.push_async_callback(self.dns.close)
                self.node_env["ELASTIN_DNS"] = f"{self.dns.host}:{self.dns.port}"
            await self.register()
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                await self.recover(tg)
                clock = self.clock
                tg.create_task(keep_running("the agent's reporter", self.reporter.run, clock))
                vital = LOOP_GIVE_UP  # the node is no use without these: fail loudly
                tg.create_task(keep_running("the agent's heartbeat", self.heartbeat, clock, vital))
                if self.cfg.metrics_interval > 0:
                    tg.create_task(
                        keep_running("the agent's metrics reports", self.report_metrics, clock)
                    )
                    tg.create_task(  # what the metrics loop reads of the spec (app gauges)
                        keep_running("the agent's application refresh", self.keep_apps_fresh, clock)
                    )
                tg.create_task(keep_running("the agent's log caps", self.keep_logs, clock))
                tg.create_task(keep_running("the agent's allocation GC", self.keep_allocs, clock))
                tg.create_task(
                    keep_running(
                        "the agent's allocation watch",
                        lambda: self.watch_allocations(tg),
                        clock,
                        vital,
                    )
                )
                if self.cfg.mesh:
                    mesh_dir = self.cfg.data_dir / "mesh"
                    proxy = local_haproxy(mesh_dir, self.clock)
                    mesh = MeshManager(
                        lambda: self.client,
                        self.node_id,
                        mesh_dir,
                        proxy,
                        clock=self.clock,
                        on_left_out=self.mesh_left_out,
                        ports=self.ports,
                        port_holder=foreign_holder(proxy) if proxy is not None else None,
                        on_listener_failed=self.mesh_listener_failed,
                    )
                    self.mesh = mesh
                    tg.create_task(keep_running("the mesh manager", mesh.run, clock))
                    tg.create_task(keep_running("the mesh supervisor", mesh.supervise, clock))

    def mesh_left_out(self, app: str, why: str, callers: tuple[str, ...]) -> None:
        """The mesh left ``app`` out of this node's proxy: an error event on its allocations
        here and on those whose upstream listeners to it were dropped."""
        message = (
            f"application {app} is left out of this node's proxy: its mesh configuration "
            f"cannot be rendered ({why}); the agent's log has the details"
        )
        self.forget_told()
        for alloc_id, r in list(self.runners.items()):
            told = (alloc_id, app, why)
            if (r.alloc.app == app or alloc_id in callers) and told not in self._left_out_told:
                self._left_out_told.add(told)  # once per allocation and reason
                event = ("mesh.left_out", r.alloc.label, message, "error")
                self.reporter.report(alloc_id, events=[event])

    def mesh_listener_failed(self, listener: Listener, holder: str) -> None:
        """An upstream listener was left out of this node's proxy, its port held by
        ``holder``: an error event on the allocation it belongs to (once per holder)."""
        alloc_id = listener.name.split(".", 1)[0]  # listeners are <allocation>.<upstream>
        r = self.runners.get(alloc_id)
        told = (listener.name, listener.port, holder)
        self.forget_told()
        if r is None or told in self._listener_told:
            return
        self._listener_told.add(told)
        upstream = listener.name.split(".", 1)[1] if "." in listener.name else listener.name
        message = (
            f"its upstream listener for {upstream} on {listener.address}:{listener.port} is "
            f"left out of this node's proxy: the port is held by {holder}; the node's other "
            "listeners are served, and this one is added as soon as the port is free (stop "
            "that process, or restart this instance for another port)"
        )
        self.reporter.report(
            alloc_id, events=[("mesh.listener_failed", r.alloc.label, message, "error")]
        )

    async def keep_logs(self) -> None:
        """Every ``LOG_CHECK_SECONDS`` cap every instance's logs."""
        while True:
            await self.cap_logs()
            await self.clock.sleep(LOG_CHECK_SECONDS)

    async def keep_allocs(self) -> None:
        """Every ``GC_INTERVAL`` (every ``LOW_DISK_GC_INTERVAL`` while the data disk is low)
        collect the allocation directories of allocations this agent no longer knows
        (``elastin.agent.gc``). Its own loop: a long removal never holds up the log caps."""
        policy = GcPolicy(self.cfg.gc_retention, self.cfg.gc_disk_threshold)
        last_gc = self.clock.monotonic()
        while True:
            await self.clock.sleep(LOW_DISK_GC_INTERVAL)
            since = self.clock.monotonic() - last_gc
            if since >= GC_INTERVAL or await asyncio.to_thread(self._disk_low, policy):
                await self.collect_allocs(policy)
                last_gc = self.clock.monotonic()

    def _disk_low(self, policy: GcPolicy) -> bool:
        """Whether the data disk is above the GC's threshold (blocking: run it in a thread)."""
        try:
            return disk_used(self.alloc_root) >= policy.disk_threshold
        except OSError:
            return False

    async def cap_logs(self) -> None:
        """Keep every instance's logs within their cap (in a worker thread); bytes cut
        without a copy (no room on the disk) are counted and reported as an event."""
        todo = [
            (r, h, r.driver)
            for r in list(self.runners.values())
            if (h := r.handle) is not None and isinstance(r.driver, LogCapping)
        ]
        if not todo:
            return

        def cap_all() -> list[tuple[AllocRunner, list[Rotation]]]:
            out = []
            for r, h, d in todo:
                try:
                    out.append((r, d.rotate_logs(h)))
                except Exception as e:  # one instance's logs never stop the others'
                    log.warning("cannot cap the logs of %s: %s", r.alloc.name, e)
            return out

        for r, done in await asyncio.to_thread(cap_all):
            for rot in done:
                if not rot.dropped:
                    continue
                self.log_dropped_bytes += rot.dropped
                msg = (
                    f"{rot.path.name} passed its size limit and {rot.dropped} bytes of it "
                    f"were dropped: {rot.reason}; free space on the agent's data disk "
                    f"({self.cfg.data_dir})"
                )
                log.warning("%s: %s", r.alloc.name, msg)
                self.reporter.report(
                    r.alloc.id, events=[("alloc.logs_dropped", r.alloc.label, msg, "warning")]
                )

    async def collect_allocs(self, policy: GcPolicy) -> list[str]:
        """Remove the directories of allocations this agent no longer knows (``gc``). Each
        is taken away on the event loop (``claim``: checked against the runners and handles,
        then renamed aside in one step), so a runner starting meanwhile never loses its
        directory; the removal itself runs in a thread."""
        loop = asyncio.get_running_loop()

        async def check(name: str) -> Path | None:
            if name in self.runners or name in held_by_handles(self.state_dir):
                return None
            return claim(self.alloc_root, name)

        def claim_on_loop(name: str) -> Path | None:
            return asyncio.run_coroutine_threadsafe(check(name), loop).result()

        try:
            dirs: list[AllocDir] = await asyncio.to_thread(scan_allocs, self.alloc_root)
            removed = await asyncio.to_thread(
                collect, self.alloc_root, dirs, claim_on_loop, self.clock.time(), policy
            )
        except Exception as e:  # the next pass tries again
            log.warning("cannot collect allocation directories: %s", e)
            return []
        if removed:
            self.allocs_collected += len(removed)
            log.info("removed %d allocation directories: %s", len(removed), ", ".join(removed))
        return removed

    async def _close_client(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()

    def instances_running(self) -> list[str]:
        """The allocations whose instance may still run on this node: a runner supervising
        one, or a handle on disk (what the next agent re-attaches to, also when a runner was
        cancelled because this agent stops)."""
        running = {alloc_id for alloc_id, r in self.runners.items() if r.handle is not None}
        with contextlib.suppress(OSError):
            for path in self.state_dir.glob("*.json"):
                loaded = AllocRunner.load_handle(path)
                if loaded is not None and supervisor_alive(loaded[0]):
                    running.add(path.stem)
        return sorted(running)

    def stop_mesh_if_idle(self, force: bool = False) -> None:
        """Stop this node's HAProxy when no instance runs here any more (or ``force``); while
        one does, the proxy keeps serving its upstream listeners without the agent."""
        if self.mesh is None:
            return
        self.mesh.close_in_flight()  # a shared reading under way has no one to serve
        if self.mesh.proxy is None:
            return
        running = self.instances_running()
        if force or not running:
            self.mesh.proxy.stop()
        elif self.mesh.proxy.alive():
            log.warning(
                "the node's HAProxy keeps running for %d instance(s); the next agent adopts it",
                len(running),
            )

    async def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every instance this agent runs (used by `elastin up` on Ctrl-C)."""
        for r in self.runners.values():
            r.request_stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for r in list(self.runners.values()):
                    await r.done.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.reporter.flush()
