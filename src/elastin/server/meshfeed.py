"""The mesh feed: every node's mesh snapshot, pushed to its agent as it changes; the
agents' acknowledgements; the service registry.

A snapshot of mesh version V (the store revision of the last mesh-relevant change,
``Changes.mesh``) is built from one read of the store per version: when a change wakes every
agent at once, they share it (``_inputs``). What every node shares (the clusters: services
and their endpoints) is encoded once per version and spliced into each node's answer
(``json``); only the listeners are per node.

Acknowledgements: an agent asks for version > N only after its proxy serves N, and on the
stream it acknowledges with ``ack``; ``pending(V)`` lists the live proxies not serving V yet,
and ``converged`` waits for them (an agent stopping an instance drains it that way). A node
counts as live while its stream is open or within ``MESH_LIVE`` s of its last query.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass

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
from elastin.mesh.model.registry import ServiceEntry
from elastin.model.cluster import Allocation
from elastin.model.codec import to_data
from elastin.model.workload import Application
from elastin.server.repo import Repo
from elastin.server.waits import Changes, Watermark

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

    async def stream(self, node_id: str, keepalive: float = 15.0) -> AsyncGenerator[bytes, None]:
        """Node ``node_id``'s snapshots as they change, one JSON line each (the current one
        first), a bare newline every ``keepalive`` s of quiet. While the stream is open the
        node's proxy counts as live for draining; the agent acknowledges with ``ack``."""
        self._streams[node_id] = self._streams.get(node_id, 0) + 1
        self._acked.setdefault(node_id, (0, self.clock.monotonic()))
        try:
            version = -1
            while not self.version.closed:
                if await self.version.wait_past(version, keepalive) <= version:
                    yield b"\n"
                    continue
                version, body = await self.json(node_id)
                yield body + b"\n"
        finally:
            self._streams[node_id] -= 1

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
