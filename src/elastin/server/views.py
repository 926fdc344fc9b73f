"""Read-only views of the cluster for the API: applications, services with their counts,
allocations with their measured usage, nodes, events, the change stream and the resource
report. Nothing here writes.

Allocations come in one stable order (``in_order``: application, workload, index, newest
first), and without ``all`` only those of applications that exist: a deleted application's
instances are history (``?all=true`` shows them), not what runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from elastin.model.cluster import Allocation, Event, Node, Usage
from elastin.model.codec import to_data
from elastin.model.workload import Workload
from elastin.scheduler.accounting import resource_report
from elastin.server.applier import to_cluster_state
from elastin.server.apps import Apps
from elastin.server.errors import NotFound
from elastin.server.repo import AppRecord, Repo
from elastin.server.telemetry import Telemetry
from elastin.store.base import StateStore, WatchEvent


@dataclass(frozen=True)
class AllocFilter:
    app: str | None = None
    workload: str | None = None
    node: str | None = None
    all: bool = False  # include stopped and lost ones (failed and complete are always shown)

    def keeps(self, a: Allocation, apps: frozenset[str] | None = None) -> bool:
        """Whether ``a`` is shown; ``apps``: the applications that exist (without ``all``,
        another application's allocations are not)."""
        if (self.app and a.app != self.app) or (self.workload and a.workload != self.workload):
            return False
        if self.node and a.node_id != self.node:
            return False
        if self.all:
            return True
        if apps is not None and a.app not in apps:
            return False
        return not a.terminal or a.status in ("failed", "complete")


def in_order(allocs: list[Allocation]) -> list[Allocation]:
    """Allocations by application, workload and index, the newest first among those that
    share an index (a replacement before the one it replaced)."""
    return sorted(allocs, key=lambda a: (a.app, a.workload, a.index, -a.created_at, a.id))


class Views:
    def __init__(self, store: StateStore, repo: Repo, apps: Apps, telemetry: Telemetry) -> None:
        self.store = store
        self.repo = repo
        self.apps = apps
        self.telemetry = telemetry

    async def revision(self) -> int:
        return await self.store.revision()

    async def applications(self) -> list[AppRecord]:
        return await self.repo.list_apps()

    async def application(self, name: str) -> AppRecord:
        found = await self.repo.get_app(name)
        if found is None:
            raise NotFound(f"no application named {name!r}", hint="see `elastin ps`")
        return found[0]

    async def services(self) -> list[dict[str, Any]]:
        """Every service and job with its desired, running, pending, complete and failed
        counts (complete and failed: of its current version only — an older version's or a
        deleted application's runs are history)."""
        allocs, _ = await self.repo.list_allocs()
        out = []
        for rec in await self.repo.list_apps():
            for w in rec.app.workloads:
                mine = [a for a in allocs if a.app == rec.app.name and a.workload == w.name]
                live = [a for a in mine if not a.terminal]
                version = rec.versions.get(w.name, 0)
                current = [a for a in mine if a.spec_version == version]
                out.append(
                    {
                        "app": rec.app.name,
                        "name": w.name,
                        "type": w.type,
                        "kind": w.kind,
                        "desired": 0 if w.name in rec.stopped else w.instances,
                        "stopped": w.name in rec.stopped,
                        "running": sum(1 for a in live if a.status == "running"),
                        "pending": sum(1 for a in live if a.status == "pending"),
                        "complete": sum(1 for a in current if a.status == "complete"),
                        "failed": sum(1 for a in current if a.status == "failed"),
                        "completions": w.completions if w.type == "job" else None,
                        "priority": w.priority,
                        "resources": to_data(w.resources),
                        "version": version,
                        "user": w.user,
                    }
                )
        return out

    async def service(self, ref: str) -> tuple[AppRecord, Workload, list[Allocation]]:
        """One workload (``name`` or ``app/name``) with its allocations."""
        rec, _, w = await self.apps.find_workload(ref)
        allocs, _ = await self.repo.list_allocs()
        mine = [
            self.telemetry.with_usage(a)
            for a in allocs
            if a.app == rec.app.name and a.workload == w.name
        ]
        return rec, w, mine

    async def allocations(self, where: AllocFilter) -> list[Allocation]:
        """The allocations ``where`` keeps, ``in_order``, with their measured usage."""
        allocs, _ = await self.repo.list_allocs()
        apps = None if where.all else frozenset(r.app.name for r in await self.repo.list_apps())
        kept = [a for a in allocs if where.keeps(a, apps)]
        return [self.telemetry.with_usage(a) for a in in_order(kept)]

    async def allocation(self, alloc_id: str) -> Allocation:
        found = await self.repo.get_alloc(alloc_id)
        if found is None:
            raise NotFound(f"no allocation {alloc_id!r}", hint="see `elastin ps -a`")
        return self.telemetry.with_usage(found[0])

    async def nodes(self) -> list[tuple[Node, Usage]]:
        return [(n, self.telemetry.node_usage(n.id)) for n in await self.repo.list_nodes()]

    async def node(self, node_id: str) -> Node:
        found = await self.repo.get_node(node_id)
        if found is None:
            raise NotFound(f"no node {node_id!r}", hint="see `elastin nodes`")
        return found[0]

    async def events(self, since: int = 0, limit: int = 200) -> list[Event]:
        return await self.repo.list_events(since, limit)

    async def watch(self, prefix: str, from_rev: int) -> AsyncIterator[WatchEvent]:
        """Every change under ``prefix`` from ``from_rev`` (0: from now on)."""
        if from_rev == 0:
            from_rev = await self.store.revision() + 1
        async for ev in self.store.watch(prefix, from_rev):
            yield ev

    async def resources(self) -> dict[str, Any]:
        """The accounting report: requested, allocated and measured per kind, node, cluster."""
        snap = await self.repo.snapshot()
        report = resource_report(to_cluster_state(snap), self.telemetry.usage())
        data: dict[str, Any] = to_data(report)
        return data

    async def all_allocations(self) -> tuple[list[Allocation], int]:
        """Every allocation, finished ones too, and the revision they were read at."""
        return await self.repo.list_allocs()
