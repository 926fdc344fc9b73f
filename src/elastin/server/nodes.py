"""Nodes: registration, heartbeats, liveness, and each node's blocking query for what it
should run.

A heartbeat is kept in memory (``Telemetry`` takes its numbers); the node's record is written
at most every ``PERSIST_EVERY`` s, or when it comes back. ``check`` marks a node ``down`` after
``HEARTBEAT_TTL`` s of silence (the scheduler then finds its allocations lost).
``allocations(node, index, wait)`` answers once what the node should run changed past
``index`` (``Changes.node``), so an agent's own status reports do not wake it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from elastin.clock import SYSTEM, Clock
from elastin.mesh.model.traffic import ClusterStats
from elastin.model.cluster import Allocation, Node, Usage
from elastin.server.errors import NotFound
from elastin.server.repo import Repo
from elastin.server.telemetry import Telemetry
from elastin.server.waits import Changes

HEARTBEAT_TTL = 30.0  # seconds without a heartbeat before a node is marked down
PERSIST_EVERY = 10.0  # seconds between writes of a ready node's last heartbeat


class Nodes:
    def __init__(
        self, repo: Repo, changes: Changes, telemetry: Telemetry, clock: Clock = SYSTEM
    ) -> None:
        self.repo = repo
        self.changes = changes
        self.telemetry = telemetry
        self.clock = clock
        self._last_seen: dict[str, float] = {}  # node id -> last heartbeat (in memory)

    async def register(self, node: Node) -> Node:
        found = await self.repo.get_node(node.id)
        node = replace(node, status="ready", last_heartbeat=self.clock.time())
        what = "re-registered" if found else "registered"
        drivers = ", ".join(node.drivers)
        rev = await self.repo.commit(
            nodes=[node],
            events=[
                (
                    f"node.{what.replace('-', '')}",
                    node.name,
                    f"node {what}: {node.capacity.human()}, drivers {drivers}",
                    "info",
                )
            ],
        )
        if rev is not None:
            self.changes.touch_nodes([node.id], rev)
            self.changes.committed(rev)
        return node

    async def heartbeat(
        self,
        node_id: str,
        usage: Mapping[str, Usage],
        node_usage: Usage | None,
        mesh: Mapping[str, ClusterStats] | None = None,
    ) -> Node:
        found = await self.repo.get_node(node_id)
        if not found:
            raise NotFound(f"node {node_id!r} is not registered", hint="the agent registers again")
        node, _ = found
        now = self.clock.time()
        self.telemetry.record(node_id, usage, node_usage, mesh)
        if node.status != "ready":
            node = replace(node, status="ready", last_heartbeat=now)
            rev = await self.repo.commit(
                nodes=[node], events=[("node.ready", node.name, "node is back", "info")]
            )
            if rev is not None:
                self.changes.committed(rev)
        elif now - node.last_heartbeat > PERSIST_EVERY:
            # heartbeats are frequent: keep them in memory and persist now and then
            node = replace(node, last_heartbeat=now)
            await self.repo.commit(nodes=[node])
        self._last_seen[node_id] = now
        return node

    async def check(self) -> None:
        """Mark nodes down that missed heartbeats for ``HEARTBEAT_TTL`` seconds."""
        now = self.clock.time()
        for node in await self.repo.list_nodes():
            seen = max(node.last_heartbeat, self._last_seen.get(node.id, 0.0))
            if node.status == "ready" and now - seen > HEARTBEAT_TTL:
                self.telemetry.forget(node.id)  # its numbers are not current
                rev = await self.repo.commit(
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
                if rev is not None:
                    self.changes.committed(rev)

    async def allocations(
        self, node_id: str, index: int, wait: float
    ) -> tuple[list[Allocation], int]:
        """The live allocations of a node; blocks up to ``wait`` s until what the node
        should run changes past ``index``."""
        mark = self.changes.node(node_id)
        rev = await mark.wait_past(index, wait)
        allocs, _ = await self.repo.list_allocs()
        return [a for a in allocs if a.node_id == node_id and not a.terminal], rev
