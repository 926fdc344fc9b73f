"""The server's operations: apply, diff, scale, stop and delete applications; register nodes
and take their heartbeats and allocation reports; run the scheduler and apply its plans.

The API layer (``api.py``) only translates HTTP to calls here. Every change goes through the
store; after each commit ``changed`` is notified so that blocking queries (agents waiting for
their allocations) and the scheduling loop wake up.

Scheduling: ``schedule_once`` takes a snapshot, asks the pure scheduler for a plan, and commits
it in one transaction guarded by the ``mod_rev`` of every allocation and application it read. If
anything moved in between, the plan is re-checked against a fresh snapshot (``check_plan``) and
recomputed when it no longer holds — the plan applier pattern of Nomad.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import random
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from elastin.mesh.haproxy.stats import ClusterStats
from elastin.mesh.model import Cluster as MeshCluster
from elastin.mesh.model import MeshSnapshot
from elastin.mesh.model.build import build_clusters, build_listeners, localize, wants_ack
from elastin.mesh.model.registry import ServiceEntry, registry
from elastin.model.cluster import (
    Allocation,
    IllegalTransition,
    Node,
    Usage,
    check_transition,
)
from elastin.model.codec import to_data
from elastin.model.errors import SpecError
from elastin.model.settled import Settlement, settlement
from elastin.model.spec import parse_spec
from elastin.model.workload import Application, Workload
from elastin.scheduler import (
    ClusterState,
    Plan,
    SchedulerOptions,
    check_plan,
    plan_writes,
    schedule,
)
from elastin.scheduler.accounting import resource_report
from elastin.server.errors import Conflict, Invalid, NotFound
from elastin.server.repo import AppRecord, Repo, Snapshot
from elastin.store.base import StateStore

log = logging.getLogger("elastin.server")

HEARTBEAT_TTL = 30.0  # seconds without a heartbeat before a node is marked down


@dataclass(frozen=True)
class MeshInputs:
    """What every node's mesh snapshot of one version is built from, read and encoded once."""

    version: int
    apps: dict[str, Application]
    allocs: list[Allocation]
    addresses: dict[str, str]
    by_node: dict[str, list[Allocation]]
    clusters: tuple[MeshCluster, ...]  # shared form: no endpoint marked local
    names: frozenset[str]
    clusters_json: bytes
    ack_wanted: bool


TRAFFIC_COUNTERS = (
    "requests",
    "errors",
    "connect_errors",
    "retries",
    "in_flight",
    "endpoints_up",
    "avg_response_ms",
)
MESH_LIVE = 45.0  # seconds since a node's last mesh query before its proxy stops counting
HISTORY_KEPT = 100_000  # store revisions of change history kept for watchers


def workload_fingerprint(w: Workload) -> str:
    """A hash of everything that needs a restart when it changes (not the replica count)."""
    data = to_data(replace(w, replicas=0))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WorkloadChange:
    workload: str
    type: str  # service | job
    change: Literal["add", "update", "scale", "remove", "unchanged"]
    detail: str = ""


@dataclass(frozen=True)
class ApplyResult:
    app: str
    changes: tuple[WorkloadChange, ...]
    dry_run: bool
    generation: int = 0
    revision: int = 0

    @property
    def changed(self) -> bool:
        return any(c.change != "unchanged" for c in self.changes)


def diff_apps(old: AppRecord | None, new: Application) -> tuple[WorkloadChange, ...]:
    out: list[WorkloadChange] = []
    old_app = old.app if old else Application(new.name)
    for w in new.workloads:
        prev = old_app.workload(w.name)
        if prev is None:
            out.append(WorkloadChange(w.name, w.type, "add", f"{w.instances} instance(s)"))
        elif workload_fingerprint(prev) != workload_fingerprint(w):
            out.append(WorkloadChange(w.name, w.type, "update", "spec changed: instances replaced"))
        elif prev.replicas != w.replicas:
            out.append(
                WorkloadChange(w.name, w.type, "scale", f"replicas {prev.replicas} -> {w.replicas}")
            )
        elif old and w.name in old.stopped:
            out.append(WorkloadChange(w.name, w.type, "update", "was stopped: starts again"))
        else:
            out.append(WorkloadChange(w.name, w.type, "unchanged"))
    for w in old_app.workloads:
        if new.workload(w.name) is None:
            out.append(WorkloadChange(w.name, w.type, "remove", "instances stopped"))
    return tuple(out)


def to_cluster_state(snap: Snapshot) -> ClusterState:
    return ClusterState(
        revision=snap.revision,
        nodes={k: n for k, (n, _) in snap.nodes.items()},
        apps={k: (rec.effective(), dict(rec.versions)) for k, (rec, _) in snap.apps.items()},
        allocations={k: a for k, (a, _) in snap.allocs.items()},
    )


class Cluster:
    """The server's state machine over a store. One instance per server process."""

    def __init__(
        self,
        store: StateStore,
        *,
        clock: Callable[[], float] = time.time,
        options: SchedulerOptions | None = None,
        seed: int | None = None,
    ) -> None:
        self.store = store
        self.repo = Repo(store, clock)
        self.clock = clock
        self.options = options or SchedulerOptions()
        self.rng = random.Random(seed)
        self.changed = asyncio.Condition()
        self.dirty = asyncio.Event()
        self.usage: dict[str, Usage] = {}  # alloc id -> last measured usage (not persisted)
        self.node_usage: dict[str, Usage] = {}
        # node id -> its proxy's counters per mesh cluster, from heartbeats (not persisted)
        self.mesh_stats: dict[str, dict[str, ClusterStats]] = {}
        self._ids = itertools.count()
        self._lock = asyncio.Lock()  # serialises scheduling passes
        self._last_seen: dict[str, float] = {}  # node id -> last heartbeat (in memory)
        # node id -> revision of the last change to what that node should run; the agents'
        # blocking queries wait on it, so an agent's own status reports do not wake it
        self._node_rev: dict[str, int] = {}
        # revision of the last change that can alter a mesh snapshot (endpoints, apps)
        self._mesh_rev = 0
        self.mesh_changed = asyncio.Condition()
        # node id -> (last mesh version its agent applied, when it said so); an agent asks
        # for version > N only after it has applied N, so its query is its acknowledgement
        self._mesh_acked: dict[str, tuple[int, float]] = {}
        self._mesh_streams: dict[str, int] = {}  # node id -> open snapshot streams
        self.mesh_acks = asyncio.Condition()
        self._mesh_cache: tuple[int, asyncio.Future[MeshInputs]] | None = None
        self._closing = False  # shutting down: blocking queries answer at once
        self._closer: asyncio.Task[None] | None = None

    def close_queries(self) -> None:
        """Answer every blocking query now (the server is stopping; agents ask again)."""
        self._closing = True

        async def wake() -> None:
            for cond in (self.changed, self.mesh_changed, self.mesh_acks):
                async with cond:
                    cond.notify_all()

        self._closer = asyncio.get_running_loop().create_task(wake())

    def new_id(self) -> str:
        return secrets.token_hex(4) + f"{next(self._ids) % 0xFFFF:04x}"

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def kick(self) -> None:
        """Ask the scheduling loop for a pass."""
        self.dirty.set()

    async def _committed(self) -> None:
        self.kick()
        await self.notify()
        await self._mesh_touch()

    async def _mesh_touch(self) -> None:
        self._mesh_rev = await self.store.revision()
        async with self.mesh_changed:
            self.mesh_changed.notify_all()

    # applications ---------------------------------------------------------------------
    def parse(self, text: str, file: str, base_dir: str) -> Application:
        try:
            return parse_spec(text, file=file, base_dir=base_dir)
        except SpecError as e:
            raise Invalid(
                e.render(),
                hint="fix the file and apply it again; nothing was changed",
                issues=[i.to_dict() for i in e.issues],
            ) from None

    async def apply(
        self, text: str, *, file: str = "", base_dir: str = "", dry_run: bool = False
    ) -> ApplyResult:
        app = self.parse(text, file, base_dir)
        for _ in range(10):
            found = await self.repo.get_app(app.name)
            old, mod_rev = found if found else (None, 0)
            changes = diff_apps(old, app)
            if dry_run:
                return ApplyResult(app.name, changes, True, old.generation if old else 0)
            versions = dict(old.versions) if old else {}
            fps = dict(old.fingerprints) if old else {}
            for w in app.workloads:
                fp = workload_fingerprint(w)
                if fps.get(w.name) != fp:
                    versions[w.name] = versions.get(w.name, 0) + 1
                    fps[w.name] = fp
            for name in list(versions):
                if app.workload(name) is None:
                    versions.pop(name)
                    fps.pop(name, None)
            record = AppRecord(
                app=app,
                versions=versions,
                fingerprints=fps,
                stopped=(),
                generation=(old.generation + 1) if old else 1,
                source=file,
                applied_at=self.clock(),
            )
            summary = ", ".join(
                f"{c.workload}: {c.change}" for c in changes if c.change != "unchanged"
            )
            rev = await self.repo.commit(
                compares=[self.repo.compare_app(app.name, mod_rev)],
                apps=[record],
                events=[("app.applied", app.name, summary or "no changes", "info")],
            )
            if rev is not None:
                await self._committed()
                return ApplyResult(app.name, changes, False, record.generation, rev)
        raise Conflict(f"application {app.name!r} kept changing while applying; try again")

    async def delete_app(self, name: str) -> int:
        found = await self.repo.get_app(name)
        if not found:
            raise NotFound(f"no application named {name!r}", hint="see `elastin ps` for the list")
        rev = await self.repo.commit(
            compares=[self.repo.compare_app(name, found[1])],
            delete_apps=[name],
            events=[("app.deleted", name, "application deleted; stopping its instances", "info")],
        )
        if rev is None:
            raise Conflict(f"application {name!r} changed while deleting; try again")
        await self._committed()
        return rev

    async def settlement(self, name: str, index: int, wait: float) -> tuple[int, Settlement]:
        """Where application ``name`` stands; blocks up to ``wait`` s for a change of its
        allocations past ``index`` (the index of an earlier answer)."""
        if not self._mesh_rev:
            self._mesh_rev = await self.store.revision()
        await self._wait_past(lambda: self._mesh_rev, index, wait, self.mesh_changed)
        rev = self._mesh_rev
        found = await self.repo.get_app(name)
        if found is None:
            raise NotFound(f"no application named {name!r}", hint="see `elastin ps`")
        allocs, _ = await self.repo.list_allocs()
        rec = found[0]
        return rev, settlement(rec.app, rec.stopped, allocs)

    async def find_workload(self, ref: str) -> tuple[AppRecord, int, Workload]:
        """Find a workload by ``name`` or ``app/name``."""
        app_name, _, wl = ref.rpartition("/")
        matches: list[tuple[AppRecord, Workload]] = []
        for rec in await self.repo.list_apps():
            if app_name and rec.app.name != app_name:
                continue
            w = rec.app.workload(wl)
            if w is not None:
                matches.append((rec, w))
        if not matches:
            raise NotFound(f"no service or job named {ref!r}", hint="see `elastin ps`")
        if len(matches) > 1:
            names = ", ".join(f"{r.app.name}/{w.name}" for r, w in matches)
            raise Invalid(f"{ref!r} is ambiguous: {names}", hint="name it as app/service")
        rec, w = matches[0]
        found = await self.repo.get_app(rec.app.name)
        assert found is not None
        return found[0], found[1], w

    async def scale(self, ref: str, replicas: int) -> AppRecord:
        if not 0 <= replicas <= 1000:
            raise Invalid(f"replicas must be between 0 and 1000, got {replicas}")
        rec, mod_rev, w = await self.find_workload(ref)
        if w.type != "service":
            raise Invalid(f"{ref!r} is a job; only services have replicas")
        new_app = replace(
            rec.app,
            workloads=tuple(
                replace(x, replicas=replicas) if x.name == w.name else x for x in rec.app.workloads
            ),
        )
        new = replace(
            rec,
            app=new_app,
            stopped=tuple(s for s in rec.stopped if s != w.name),
            generation=rec.generation + 1,
        )
        rev = await self.repo.commit(
            compares=[self.repo.compare_app(rec.app.name, mod_rev)],
            apps=[new],
            events=[
                (
                    "service.scaled",
                    f"{rec.app.name}/{w.name}",
                    f"replicas {w.replicas} -> {replicas}",
                    "info",
                )
            ],
        )
        if rev is None:
            raise Conflict(f"{ref!r} changed while scaling; try again")
        await self._committed()
        return new

    async def stop(self, ref: str | None) -> list[str]:
        """Stop one workload (``ref``) or every workload of every application."""
        stopped: list[str] = []
        if ref:
            targets = [await self.find_workload(ref)]
            recs = [(r, m, [w.name]) for r, m, w in targets]
        else:
            recs = []
            for rec in await self.repo.list_apps():
                found = await self.repo.get_app(rec.app.name)
                if found:
                    recs.append((found[0], found[1], [w.name for w in found[0].app.workloads]))
        for rec, mod_rev, names in recs:
            new = replace(
                rec,
                stopped=tuple(sorted(set(rec.stopped) | set(names))),
                generation=rec.generation + 1,
            )
            rev = await self.repo.commit(
                compares=[self.repo.compare_app(rec.app.name, mod_rev)],
                apps=[new],
                events=[("app.stopped", rec.app.name, "stopped: " + ", ".join(names), "info")],
            )
            if rev is None:
                raise Conflict(f"{rec.app.name!r} changed while stopping; try again")
            stopped += [f"{rec.app.name}/{n}" for n in names]
        await self._committed()
        return stopped

    # nodes ----------------------------------------------------------------------------
    async def register_node(self, node: Node) -> Node:
        found = await self.repo.get_node(node.id)
        node = replace(node, status="ready", last_heartbeat=self.clock())
        what = "re-registered" if found else "registered"
        rev = await self.repo.commit(
            nodes=[node],
            events=[
                (
                    f"node.{what.replace('-', '')}",
                    node.name,
                    f"node {what}: {node.capacity.human()}, drivers {', '.join(node.drivers)}",
                    "info",
                )
            ],
        )
        if rev is not None:
            self._touch({node.id}, rev)
        await self._committed()
        return node

    async def heartbeat(
        self,
        node_id: str,
        usage: dict[str, Usage],
        node_usage: Usage | None,
        mesh: dict[str, ClusterStats] | None = None,
    ) -> Node:
        found = await self.repo.get_node(node_id)
        if not found:
            raise NotFound(f"node {node_id!r} is not registered", hint="the agent registers again")
        node, _ = found
        self.usage.update(usage)
        if node_usage is not None:
            self.node_usage[node_id] = node_usage
        if mesh is not None:
            self.mesh_stats[node_id] = mesh
        if node.status != "ready":
            node = replace(node, status="ready", last_heartbeat=self.clock())
            await self.repo.commit(
                nodes=[node], events=[("node.ready", node.name, "node is back", "info")]
            )
            await self._committed()
        else:
            # heartbeats are frequent: keep them in memory and persist at most every 10 s
            if self.clock() - node.last_heartbeat > 10:
                node = replace(node, last_heartbeat=self.clock())
                await self.repo.commit(nodes=[node])
        self._last_seen[node_id] = self.clock()
        return node

    async def check_nodes(self) -> None:
        """Mark nodes down that missed heartbeats for ``HEARTBEAT_TTL`` seconds."""
        now = self.clock()
        for node in await self.repo.list_nodes():
            seen = max(node.last_heartbeat, self._last_seen.get(node.id, 0.0))
            if node.status == "ready" and now - seen > HEARTBEAT_TTL:
                self.mesh_stats.pop(node.id, None)  # its proxy's counters are not current
                await self.repo.commit(
                    nodes=[replace(node, status="down")],
                    events=[
                        (
                            "node.down",
                            node.name,
                            f"no heartbeat for {now - seen:.0f}s; its instances are lost",
                            "warning",
                        )
                    ],
                )
                await self._committed()

    async def _wait_past(
        self, current: Callable[[], int], index: int, wait: float, cond: asyncio.Condition
    ) -> None:
        """A blocking query's wait: until ``current()`` passes ``index`` or ``wait`` s pass."""
        deadline = self.clock() + wait
        while current() <= index and wait > 0 and not self._closing:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return
            try:
                # asyncio.timeout, not wait_for: no extra task per waiter, and a change wakes
                # every agent's query or stream at once
                async with asyncio.timeout(remaining), cond:
                    await cond.wait()
            except TimeoutError:
                return

    async def node_allocations(
        self, node_id: str, index: int, wait: float
    ) -> tuple[list[Allocation], int]:
        """The allocations of a node; blocks up to ``wait`` s until what the node should run
        changes past ``index`` (an index from an earlier server process is honoured too)."""
        if node_id not in self._node_rev:
            self._node_rev[node_id] = await self.store.revision()
        await self._wait_past(lambda: self._node_rev[node_id], index, wait, self.changed)
        node_rev = self._node_rev[node_id]
        allocs, _ = await self.repo.list_allocs()
        return [a for a in allocs if a.node_id == node_id and not a.terminal], node_rev

    async def mesh_snapshot(self, node_id: str, index: int, wait: float) -> MeshSnapshot:
        """Node ``node_id``'s mesh snapshot; blocks up to ``wait`` s for a version > ``index``.

        Asking with ``index`` N acknowledges that the node's proxy serves version N."""
        await self._mesh_poll(node_id, index, wait)
        return await self._build_mesh(node_id)

    async def mesh_snapshot_json(self, node_id: str, index: int, wait: float) -> bytes:
        """``mesh_snapshot`` as the API sends it (see ``mesh_json``)."""
        await self._mesh_poll(node_id, index, wait)
        return (await self.mesh_json(node_id))[1]

    async def _mesh_poll(self, node_id: str, index: int, wait: float) -> None:
        await self._mesh_ack(node_id, index)
        await self._wait_mesh(index, wait)
        self._mesh_acked[node_id] = (self._mesh_acked[node_id][0], time.monotonic())

    async def _wait_mesh(self, index: int, wait: float) -> None:
        if not self._mesh_rev:
            self._mesh_rev = await self.store.revision()
        await self._wait_past(lambda: self._mesh_rev, index, wait, self.mesh_changed)

    async def _build_mesh(self, node_id: str) -> MeshSnapshot:
        m = await self._mesh_inputs()
        listeners = build_listeners(node_id, m.apps, m.by_node.get(node_id, ()), m.names)
        snap = MeshSnapshot(m.version, node_id, listeners, m.clusters, ack_wanted=m.ack_wanted)
        return localize(snap)

    async def mesh_json(self, node_id: str) -> tuple[int, bytes]:
        """``_build_mesh`` encoded for the wire: the clusters (the same for every node) are
        encoded once per version and spliced in; endpoints are not marked local (the agent
        does that, ``localize``)."""
        m = await self._mesh_inputs()
        listeners = build_listeners(node_id, m.apps, m.by_node.get(node_id, ()), m.names)
        head = {
            "version": m.version,
            "node": node_id,
            "listeners": to_data(listeners),
            "metrics_port": 0,
            "ack_wanted": m.ack_wanted,
        }
        body = json.dumps(head)[:-1].encode() + b', "clusters": ' + m.clusters_json + b"}"
        return m.version, body

    async def mesh_stream(
        self, node_id: str, keepalive: float = 15.0
    ) -> AsyncGenerator[bytes, None]:
        """Node ``node_id``'s mesh snapshots as they change, one JSON line each (the current
        one first), a bare newline every ``keepalive`` s of quiet. The push counterpart of
        ``mesh_snapshot``: a change costs one write per agent, not a request and an answer.
        The agent acknowledges what it applied with ``mesh_ack``; while its stream is open,
        its proxy counts as live for draining."""
        self._mesh_streams[node_id] = self._mesh_streams.get(node_id, 0) + 1
        self._mesh_acked.setdefault(node_id, (0, time.monotonic()))
        try:
            version = -1
            while not self._closing:
                await self._wait_mesh(version, keepalive)
                if self._mesh_rev <= version:
                    yield b"\n"
                    continue
                version, body = await self.mesh_json(node_id)
                yield body + b"\n"
        finally:
            self._mesh_streams[node_id] -= 1

    async def mesh_ack(self, node_id: str, version: int) -> None:
        """Node ``node_id``'s proxy serves mesh ``version`` (agents on the stream say so)."""
        await self._mesh_ack(node_id, version)

    async def _mesh_inputs(self) -> MeshInputs:
        """What mesh snapshots are built from, read once per mesh version: when a change
        wakes every agent's query at once, they share one read of the store."""
        version = self._mesh_rev
        cached = self._mesh_cache
        failed = (
            cached is not None
            and cached[1].done()
            and (cached[1].cancelled() or cached[1].exception() is not None)
        )
        if cached is None or cached[0] != version or failed:
            cached = (version, asyncio.ensure_future(self._read_mesh_inputs(version)))
            self._mesh_cache = cached
        return await asyncio.shield(cached[1])

    async def _read_mesh_inputs(self, version: int) -> MeshInputs:
        snap = await self.repo.snapshot()
        apps = {name: rec.effective() for name, (rec, _) in snap.apps.items()}
        addresses = {nid: n.address for nid, (n, _) in snap.nodes.items()}
        allocs = [a for a, _ in snap.allocs.values()]
        by_node: dict[str, list[Allocation]] = {}
        for a in allocs:
            by_node.setdefault(a.node_id, []).append(a)
        clusters = build_clusters(apps, allocs, addresses)
        return MeshInputs(
            version=version,
            apps=apps,
            allocs=allocs,
            addresses=addresses,
            by_node=by_node,
            clusters=clusters,
            names=frozenset(c.name for c in clusters),
            clusters_json=json.dumps(to_data(clusters)).encode(),
            ack_wanted=wants_ack(allocs),
        )

    async def _mesh_ack(self, node_id: str, version: int) -> None:
        before = self._mesh_acked.get(node_id, (0, 0.0))[0]
        self._mesh_acked[node_id] = (max(before, version), time.monotonic())
        if version > before:
            async with self.mesh_acks:
                self.mesh_acks.notify_all()

    def mesh_pending(self, version: int) -> list[str]:
        """Nodes whose proxies are live but do not serve mesh ``version`` yet. A node whose
        agent has not asked for a snapshot within ``MESH_LIVE`` s does not count."""
        now = time.monotonic()
        return sorted(
            n
            for n, (v, seen) in self._mesh_acked.items()
            if v < version and (now - seen < MESH_LIVE or self._mesh_streams.get(n))
        )

    async def mesh_converged(self, version: int, wait: float) -> list[str]:
        """Wait up to ``wait`` s until every live proxy serves mesh ``version`` or later;
        returns the nodes still behind (empty when converged)."""
        deadline = time.monotonic() + wait
        while pending := self.mesh_pending(version):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing:
                return pending
            async with self.mesh_acks:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.mesh_acks.wait(), timeout=min(remaining, 1.0))
        return []

    def mesh_traffic(self) -> list[dict[str, Any]]:
        """Requests, errors and retries per service port, summed over every node's proxy
        (counters since each proxy started; ``elastin traffic`` turns them into rates)."""
        total: dict[str, dict[str, Any]] = {}
        for node_id, stats in self.mesh_stats.items():
            for name, st in stats.items():
                t = total.setdefault(
                    name,
                    {"cluster": name, **st.labels, "mode": st.mode, "nodes": []}
                    | dict.fromkeys(TRAFFIC_COUNTERS, 0),
                )
                t["nodes"].append(node_id)
                t["requests"] += st.requests
                t["errors"] += st.errors
                t["connect_errors"] += st.connect_errors
                t["retries"] += st.retries
                t["in_flight"] += st.active
                t["endpoints_up"] += sum(1 for e in st.endpoints if e.status.startswith("UP"))
                t["avg_response_ms"] = max(t["avg_response_ms"], st.avg_response_ms)
        return [total[k] for k in sorted(total)]

    async def service_registry(
        self, index: int, wait: float
    ) -> tuple[int, tuple[ServiceEntry, ...]]:
        """The service registry; blocks up to ``wait`` s for a change past ``index``."""
        if not self._mesh_rev:
            self._mesh_rev = await self.store.revision()
        await self._wait_past(lambda: self._mesh_rev, index, wait, self.mesh_changed)
        m = await self._mesh_inputs()
        return m.version, registry(m.apps, m.allocs, m.addresses)

    def _touch(self, node_ids: set[str], rev: int) -> None:
        for n in node_ids:
            if n:
                self._node_rev[n] = max(self._node_rev.get(n, 0), rev)

    async def update_alloc(self, alloc_id: str, report: dict[str, Any]) -> Allocation:
        """Take an agent's report on one allocation (status, reason, exit code, ...)."""
        for _ in range(10):
            found = await self.repo.get_alloc(alloc_id)
            if not found:
                raise NotFound(f"no allocation {alloc_id!r}")
            alloc, mod_rev = found
            status = str(report.get("status", alloc.status))
            try:
                check_transition(alloc.status, status)
            except IllegalTransition as e:
                raise Conflict(str(e)) from None
            new = replace(
                alloc,
                status=status,  # type: ignore[arg-type]
                reason=str(report.get("reason", alloc.reason)),
                exit_code=report.get("exit_code", alloc.exit_code),
                restarts=int(report.get("restarts", alloc.restarts)),
                pid=int(report.get("pid", alloc.pid)),
                ports=tuple((str(k), int(v)) for k, v in report.get("ports", alloc.ports)),
                healthy=report.get("healthy", alloc.healthy),
                updated_at=self.clock(),
            )
            events = [
                (str(e[0]), str(e[1]), str(e[2]), str(e[3])) for e in report.get("events", [])
            ]
            if new == alloc and not events:
                return alloc
            rev = await self.repo.commit(
                compares=[self.repo.compare_alloc(alloc_id, mod_rev)], allocs=[new], events=events
            )
            if rev is not None:
                if new.terminal and not alloc.terminal:
                    await self._committed()  # resources freed, a job slot done: schedule
                elif (new.status, new.healthy, new.ports) != (
                    alloc.status,
                    alloc.healthy,
                    alloc.ports,
                ):
                    await self._mesh_touch()  # endpoints changed
                return new
        raise Conflict(f"allocation {alloc_id!r} kept changing; try again")

    async def update_allocs(self, reports: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Several agent reports at once; returns ``ok`` or the error per allocation."""
        out: dict[str, str] = {}
        for alloc_id, report in reports.items():
            try:
                await self.update_alloc(alloc_id, report)
                out[alloc_id] = "ok"
            except (NotFound, Conflict) as e:
                out[alloc_id] = e.message
        return out

    async def record_events(self, events: list[tuple[str, str, str, str]]) -> None:
        await self.repo.record_events(events)

    # scheduling ------------------------------------------------------------------------
    async def schedule_once(self) -> Plan | None:
        """One scheduling pass: plan on a snapshot, commit it with a revision check."""
        async with self._lock:
            snap = await self.repo.snapshot()
            state = to_cluster_state(snap)
            plan = schedule(state, self.options, self.rng, self.new_id)
            for _ in range(5):
                if plan.is_empty():
                    return None
                writes = plan_writes(state, plan, self.clock())
                rev = await self.repo.commit(
                    compares=[self.repo.compare_alloc(i, snap.allocs[i][1]) for i in writes.read],
                    allocs=list(writes.allocs.values()),
                    events=writes.events,
                )
                if rev is not None:
                    nodes = {a.node_id for a in writes.allocs.values()}
                    self._touch(nodes, rev)
                    await self._committed()
                    return plan
                snap = await self.repo.snapshot()
                state = to_cluster_state(snap)
                if check_plan(plan, state):
                    plan = schedule(state, self.options, self.rng, self.new_id)
            log.warning("could not commit a plan after 5 tries; the next pass retries")
            return None

    async def run_scheduler(self, interval: float = 2.0) -> None:
        """The scheduling loop: a pass when kicked, and every ``interval`` seconds."""
        self.kick()
        last_prune = self.clock()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dirty.wait(), timeout=interval)
            self.dirty.clear()
            await asyncio.sleep(0.01)  # gather a burst of changes into one pass
            try:
                await self.check_nodes()
                await self.schedule_once()
                if self.clock() - last_prune > 60:
                    await self.repo.prune_events()
                    await self.store.compact(HISTORY_KEPT)
                    last_prune = self.clock()
            except Exception:  # the loop must survive one bad pass; the next one retries
                log.exception("scheduling pass failed")

    # reports ---------------------------------------------------------------------------
    async def resources(self) -> dict[str, Any]:
        snap = await self.repo.snapshot()
        report = resource_report(to_cluster_state(snap), self.usage)
        data: dict[str, Any] = to_data(report)
        return data

    def alloc_with_usage(self, a: Allocation) -> Allocation:
        u = self.usage.get(a.id)
        if u is None or a.terminal:
            return a
        return replace(a, usage=u)
