"""Nodes: registration, heartbeats, liveness, and each node's blocking query for what it
should run.

A heartbeat is kept in memory (``Telemetry`` takes its numbers); the node's record is written
at most every ``PERSIST_EVERY`` s, or when it comes back. ``check`` marks a node ``down`` after
``HEARTBEAT_TTL`` s of silence (the scheduler then finds its allocations lost). Every write of
a node's record is guarded by the record it read (the store's writes yield to other tasks: a
registration or a heartbeat may land in between, and must not be overwritten).
``allocations(node, index, wait)`` answers once what the node should run changed past
``index`` (``Changes.node``), so an agent's own status reports do not wake it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import replace

from elastin.clock import SYSTEM, Clock
from elastin.mesh.model.traffic import ClusterStats
from elastin.model.cluster import Allocation, Node, Usage
from elastin.server.errors import Invalid, NotFound, ServerError
from elastin.server.relay import AGENT_API_ATTR, agent_address
from elastin.server.repo import Repo
from elastin.server.telemetry import Telemetry
from elastin.server.waits import Changes
from elastin.store.base import StoreFullError, deferrable

HEARTBEAT_TTL = 30.0  # seconds without a heartbeat before a node is marked down
PERSIST_EVERY = 10.0  # seconds between writes of a ready node's last heartbeat
_TRIES = 5


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_node(node: Node) -> None:
    """Refuse a node whose id, name or address could inject into a config, a path or a
    line of output: an IP literal or a host name, printable attributes."""
    try:
        ipaddress.ip_address(node.address)
    except ValueError:
        if not _HOSTNAME.fullmatch(node.address):
            raise Invalid(
                f"node address {node.address!r} is neither an IP address nor a host name",
                hint="the agent registers its node's address; check its configuration",
            ) from None
    for what, value, fix in (
        ("id", node.id, "remove agent/node-id in the agent's data directory: it makes a new one"),
        ("name", node.name, "give the node a name: `elastin agent --name NAME`"),
    ):
        if not _ID.fullmatch(value):
            raise Invalid(
                f"node {what} {value!r} is not a name (letters, digits, '.', '_', '-')",
                hint=fix,
            )
    for k, v in node.attributes:
        if not (k.isprintable() and v.isprintable()) or len(k) > 128 or len(v) > 1024:
            raise Invalid(f"node attribute {k!r} has control characters or is too long")
    if any(x < 0 for x in (node.capacity.cpu, node.capacity.memory, node.capacity.disk)):
        raise Invalid(f"node capacity {node.capacity.human()} is negative")
    if AGENT_API_ATTR in node.attrs():
        try:  # the same check the relay makes before it sends a request there
            agent_address(node)
        except ServerError as e:
            raise Invalid(e.message, hint=e.hint) from None


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
        """The agent's own description of its node: written as it is (it wins over any
        record of the node), and the node is ready. It is checked where it enters: the
        address reaches every proxy's configuration, the names reach logs and tables."""
        check_node(node)
        now = self.clock.time()
        self._last_seen[node.id] = now
        found = await self.repo.get_node(node.id)
        node = replace(node, status="ready", last_heartbeat=now)
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
        now = self.clock.time()
        self._last_seen[node_id] = now  # before any await: a liveness check sees it
        self.telemetry.record(node_id, usage, node_usage, mesh)
        for _ in range(_TRIES):
            found = await self.repo.get_node(node_id)
            if not found:
                raise NotFound(
                    f"node {node_id!r} is not registered", hint="the agent registers again"
                )
            node, mod_rev = found
            if node.status == "ready" and now - node.last_heartbeat <= PERSIST_EVERY:
                return node  # heartbeats are frequent: kept in memory, persisted now and then
            back = node.status != "ready"
            node = replace(node, status="ready", last_heartbeat=now)
            try:
                # a ready node's timestamp is upkeep: on a full disk it waits (the liveness
                # check reads the time seen in memory); a node coming back is not
                with deferrable() if not back else contextlib.nullcontext():
                    rev = await self.repo.commit(
                        compares=[self.repo.compare_node(node_id, mod_rev)],
                        nodes=[node],
                        events=[("node.ready", node.name, "node is back", "info")] if back else [],
                    )
            except StoreFullError:
                if back:
                    raise
                return node
            if rev is None:
                continue  # registered or marked down meanwhile: look again
            if back:
                self.changes.committed(rev)
            return node
        return node

    async def check(self) -> None:
        """Mark nodes down that missed heartbeats for ``HEARTBEAT_TTL`` seconds. Each write
        is guarded by the record it read: a node registered or heard from meanwhile stays."""
        now = self.clock.time()
        for node, mod_rev in await self.repo.list_nodes_with_revs():
            seen = max(node.last_heartbeat, self._last_seen.get(node.id, 0.0))
            if node.status != "ready" or now - seen <= HEARTBEAT_TTL:
                continue
            rev = await self.repo.commit(
                compares=[self.repo.compare_node(node.id, mod_rev)],
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
                self.telemetry.forget(node.id)  # its numbers are not current
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
