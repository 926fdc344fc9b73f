"""The mesh feed: every node's mesh snapshot, pushed to its agent as it changes; the
agents' acknowledgements; the service registry.

A snapshot of mesh version V (the store revision of the last mesh-relevant change,
``Changes.mesh``) is built from one read of the store per version: when a change wakes every
agent at once, they share it (``_inputs``). What every node shares (the clusters: services
and their endpoints, and the head's fixed parts) is encoded once per version and spliced into
each node's answer (``json``); only the node's id and its listeners are encoded per node.

Fan-out: a stream given a ``push`` (a plain function that writes a line to the client now and
says whether it could: ``elastin.serving.PUSH``) is written to by one task, ``_fan_out``, for
every new version, without waking the stream's own task; with 1,000 agents the wake-ups, the
ASGI layers each message crossed and the timers cost more than the writes themselves
(docs/performance.md). A stream whose client is not reading (``push`` says no), or without a
``push``, is woken instead and sends the newest version itself, the ASGI way (which waits for
the reader). A stream gets each version at most once and never an older one after a newer
(a client that was not reading skips to the newest, as it always did).

Acknowledgements: an agent asks for version > N only after its proxy serves N, and on the
stream it acknowledges with ``ack``; ``pending(V)`` lists the live proxies not serving V yet,
and ``converged`` waits for them (an agent stopping an instance drains it that way). A node
counts as live while its stream is open or within ``MESH_LIVE`` s of its last query.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from elastin.clock import SYSTEM, Clock
from elastin.mesh.model import Cluster as MeshCluster
from elastin.mesh.model import MeshSnapshot
from elastin.mesh.model.build import (
    build_clusters,
    build_listeners,
    guarded_registry,
    localize,
    wants_ack,
)
from elastin.mesh.model.names import ClusterName
from elastin.mesh.model.registry import ServiceEntry
from elastin.model.cluster import Allocation
from elastin.model.codec import to_data
from elastin.model.workload import Application
from elastin.server.repo import Repo
from elastin.server.waits import Changes, Watermark

log = logging.getLogger("elastin.server.mesh")

MESH_LIVE = 45.0  # seconds since a node's last mesh query before its proxy stops counting
CONVERGE_POLL = 1.0  # seconds between checks of a node's liveness while waiting


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
    # scale-to-zero service ports (cluster name) -> whether the service is at zero replicas
    wakeable: dict[str, bool]
    # the encoded line around the node's own parts (``line``)
    head: bytes = b""
    tail: bytes = b""

    def line(self, node_id: str) -> bytes:
        """Node ``node_id``'s snapshot of this version as the API sends it, and a newline
        (the stream's line): the JSON of ``{"version", "node", "listeners", "metrics_port",
        "ack_wanted", "clusters"}`` (the key order and spacing of ``json.dumps``), endpoints
        not marked local. Not kept: a node's line holds every cluster, and a thousand of them
        kept would cost a thousand times the snapshot's size."""
        listeners = build_listeners(node_id, self.apps, self.by_node.get(node_id, ()), self.names)
        return b"".join(
            (
                self.head,
                json.dumps(node_id).encode(),
                b', "listeners": ',
                json.dumps(to_data(listeners)).encode() if listeners else b"[]",
                self.tail,
            )
        )


@dataclass(eq=False)
class _Stream:
    """One open snapshot stream (``MeshFeed.stream``)."""

    node_id: str
    push: Callable[[bytes], bool] | None
    version: int = -1  # the last version its client was sent
    parked: bool = False  # its task waits for a wake (only then may the fan-out push)
    written: float = 0.0  # when it was last written to, on the loop's clock (keep-alive)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class MeshFeed:
    def __init__(self, repo: Repo, changes: Changes, clock: Clock = SYSTEM) -> None:
        self.repo = repo
        self.version = changes.mesh
        self.clock = clock
        # node id -> (last mesh version its agent applied, when it said so)
        self._acked: dict[str, tuple[int, float]] = {}
        self._streams: dict[str, int] = {}  # node id -> open snapshot streams
        self._acks = Watermark()  # bumped on every acknowledgement of a newer version
        self._cache: MeshInputs | None = None
        self._reading = asyncio.Lock()  # one read of the store per version
        # open snapshot streams, oldest first (a dict as an ordered set): the fan-out writes
        # in that order
        self._subs: dict[_Stream, None] = {}
        self._fanning: asyncio.Task[None] | None = None  # _fan_out, while a stream is open

    # snapshots --------------------------------------------------------------------------
    async def snapshot(self, node_id: str, index: int, wait: float) -> MeshSnapshot:
        """Node ``node_id``'s snapshot; blocks up to ``wait`` s for a version > ``index``.
        Asking with ``index`` N acknowledges that the node's proxy serves version N."""
        await self._poll(node_id, index, wait)
        m = await self._inputs()
        listeners = build_listeners(node_id, m.apps, m.by_node.get(node_id, ()), m.names)
        snap = MeshSnapshot(m.version, node_id, listeners, m.clusters, ack_wanted=m.ack_wanted)
        return localize(snap)

    async def snapshot_json(self, node_id: str, index: int, wait: float) -> bytes:
        """``snapshot`` as the API sends it (see ``json``)."""
        await self._poll(node_id, index, wait)
        return (await self.json(node_id))[1]

    async def json(self, node_id: str) -> tuple[int, bytes]:
        """The snapshot encoded for the wire: the clusters (the same for every node) are
        encoded once per version and spliced in; endpoints are not marked local (the agent
        does that, ``localize``)."""
        m = await self._inputs()
        return m.version, m.line(node_id)[:-1]

    async def stream(
        self,
        node_id: str,
        keepalive: float = 15.0,
        push: Callable[[bytes], bool] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Node ``node_id``'s snapshots as they change, one JSON line each (the current one
        first), a bare newline every ``keepalive`` s of quiet. While the stream is open the
        node's proxy counts as live for draining; the agent acknowledges with ``ack``.

        With ``push`` (write a line to the client now, False when it cannot), newer versions
        are written by the feed's fan-out while this generator waits; it yields only the
        first snapshot, keep-alive lines, and the newest version when ``push`` said no."""
        self._streams[node_id] = self._streams.get(node_id, 0) + 1
        self._acked.setdefault(node_id, (0, self.clock.monotonic()))
        loop = asyncio.get_running_loop()
        sub = _Stream(node_id, push, written=loop.time())
        self._subs[sub] = None
        if self._fanning is None or self._fanning.done():
            self._fanning = loop.create_task(self._fan_out())
        try:
            while not self.version.closed:
                if sub.version < self.version.value:
                    m = await self._inputs()
                    sub.version, sub.written = m.version, loop.time()
                    yield m.line(node_id)
                    continue
                # the keep-alive is timed on the loop's clock, as the wait for it is
                if loop.time() - sub.written >= keepalive:
                    sub.written = loop.time()
                    yield b"\n"
                    continue
                sub.wake.clear()
                sub.parked = True
                try:  # woken by the fan-out (a version it could not push), or by close
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(sub.written + keepalive):
                            await sub.wake.wait()
                finally:
                    sub.parked = False
        finally:
            self._streams[node_id] -= 1
            self._subs.pop(sub, None)
            if not self._subs and self._fanning is not None:
                self._fanning.cancel()
                self._fanning = None

    async def _fan_out(self) -> None:
        """Write each new version to every open stream that can take it now (``stream``);
        wake the others. Ends when the feed closes (the streams are woken to see it)."""
        seen = self.version.value
        try:
            while not self.version.closed:
                if await self.version.wait_past(seen, 3600.0) <= seen:
                    continue
                try:
                    m = await self._inputs()
                except Exception as e:  # each stream reads again, and fails on its own
                    log.debug("mesh fan-out: cannot read version %d: %s", self.version.value, e)
                    seen = self.version.value
                    for sub in self._subs:
                        sub.wake.set()
                    continue
                seen = m.version
                try:
                    self._deliver(m)
                except Exception:  # a bug: every stream sends the version itself instead
                    log.exception("mesh fan-out: cannot deliver version %d", m.version)
                    for sub in self._subs:
                        sub.wake.set()
        finally:
            for sub in self._subs:
                sub.wake.set()

    def _deliver(self, m: MeshInputs) -> None:
        """Version ``m`` to every stream behind it: pushed to those waiting with a ``push``
        that takes it, the others woken to send it themselves."""
        now = asyncio.get_running_loop().time()
        for sub in list(self._subs):  # a write never closes a stream at once; to be sure
            if sub.version >= m.version:
                continue
            if sub.parked and sub.push is not None:
                try:
                    if sub.push(m.line(sub.node_id)):
                        sub.version, sub.written = m.version, now
                        continue
                except Exception as e:  # the stream's own task meets it again, alone
                    log.debug("mesh fan-out: cannot write to %s's stream: %s", sub.node_id, e)
            sub.wake.set()

    # acknowledgements --------------------------------------------------------------------
    def ack(self, node_id: str, version: int) -> None:
        """Node ``node_id``'s proxy serves mesh ``version``."""
        before = self._acked.get(node_id, (0, 0.0))[0]
        self._acked[node_id] = (max(before, version), self.clock.monotonic())
        if version > before:
            self._acks.advance(self._acks.value + 1)

    async def _poll(self, node_id: str, index: int, wait: float) -> None:
        self.ack(node_id, index)
        await self.version.wait_past(index, wait)
        self._acked[node_id] = (self._acked[node_id][0], self.clock.monotonic())

    def pending(self, version: int) -> list[str]:
        """Nodes whose proxies are live but do not serve mesh ``version`` yet."""
        now = self.clock.monotonic()
        return sorted(
            n
            for n, (v, seen) in self._acked.items()
            if v < version and (now - seen < MESH_LIVE or self._streams.get(n))
        )

    async def converged(self, version: int, wait: float) -> list[str]:
        """Wait up to ``wait`` s until every live proxy serves mesh ``version`` or later;
        returns the nodes still behind (empty when converged)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while self.pending(version) and not self.version.closed:
                    # woken by every newer acknowledgement; liveness is looked at again
                    # at least every CONVERGE_POLL s
                    await self._acks.wait_past(self._acks.value, CONVERGE_POLL)
        return self.pending(version)

    # the registry ------------------------------------------------------------------------
    async def registry(self, index: int, wait: float) -> tuple[int, tuple[ServiceEntry, ...]]:
        """The service registry; blocks up to ``wait`` s for a change past ``index``."""
        await self.version.wait_past(index, wait)
        m = await self._inputs()
        return m.version, guarded_registry(m.apps, m.allocs, m.addresses)

    async def allocations(self) -> tuple[int, list[Allocation]]:
        """Every allocation of the current mesh version and that version (the same read of
        the store as the snapshots': once per version)."""
        m = await self._inputs()
        return m.version, m.allocs

    async def wakeable(self, node_id: str) -> dict[str, bool] | None:
        """The service ports (mesh cluster names) whose requests node ``node_id``'s proxy may
        hold in the current mesh version (``scale_to_zero``), each with whether its service is
        at zero replicas now; None when no node ``node_id`` is registered. What the agents'
        wakes are checked against (``POST /v1/nodes/{id}/wake``)."""
        m = await self._inputs()
        return m.wakeable if node_id in m.addresses else None

    # inputs ------------------------------------------------------------------------------
    async def _inputs(self) -> MeshInputs:
        """What snapshots are built from, read once per mesh version: when a change wakes
        every agent's stream at once, the first reads and the others find it cached."""
        cached = self._cache
        if cached is not None and cached.version == self.version.value:
            return cached
        async with self._reading:
            version = self.version.value
            if self._cache is None or self._cache.version != version:
                self._cache = await self._read(version)
            return self._cache

    async def _read(self, version: int) -> MeshInputs:
        snap = await self.repo.snapshot()
        # every declared workload, stopped ones (`elastin stop`) included: a stopped service
        # keeps its cluster, with no endpoint, so that stopping it is endpoint churn for the
        # proxies, not a reload — after a reload the old worker's requests in flight are not
        # in the new worker's counts, and the drain would not wait for them (docs/mesh.md)
        apps = {name: rec.for_mesh() for name, (rec, _) in snap.apps.items()}
        addresses = {nid: n.address for nid, (n, _) in snap.nodes.items()}
        allocs = [a for a, _ in snap.allocs.values()]
        by_node: dict[str, list[Allocation]] = {}
        for a in allocs:
            by_node.setdefault(a.node_id, []).append(a)
        clusters = build_clusters(apps, allocs, addresses)
        clusters_json = json.dumps(to_data(clusters)).encode()
        ack_wanted = wants_ack(allocs)
        wakeable = {}
        for c in clusters:
            if c.scale_to_zero:
                port = ClusterName.parse(c.name)
                w = apps[port.app].workload(port.service)
                wakeable[c.name] = w is not None and w.replicas == 0
        return MeshInputs(
            version=version,
            apps=apps,
            allocs=allocs,
            addresses=addresses,
            by_node=by_node,
            clusters=clusters,
            names=frozenset(c.name for c in clusters),
            clusters_json=clusters_json,
            ack_wanted=ack_wanted,
            wakeable=wakeable,
            head=b'{"version": %d, "node": ' % version,
            tail=b', "metrics_port": 0, "ack_wanted": %s, "clusters": %s}\n'
            % (json.dumps(ack_wanted).encode(), clusters_json),
        )
