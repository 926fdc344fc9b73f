"""Agents' reports on their allocations: status, reason, exit code, restarts, pid, ports,
health and events, checked against the allocation lifecycle
(``elastin.model.cluster.ALLOC_TRANSITIONS``) and committed with a compare-and-set.

A report that ends an allocation frees resources and may complete a job: the applier is
kicked. One that changes what the mesh sees (status, health, ports) advances the mesh
version, so that every proxy learns of the endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import (
    Allocation,
    AllocStatus,
    EventSpec,
    IllegalTransition,
    check_transition,
)
from elastin.server.errors import Conflict, NotFound
from elastin.server.repo import Repo
from elastin.server.waits import Changes

_TRIES = 10


@dataclass(frozen=True)
class AllocReport:
    """What an agent says about one allocation; ``None`` leaves a field as it is."""

    status: AllocStatus | None = None
    reason: str | None = None
    exit_code: int | None = None
    restarts: int | None = None
    pid: int | None = None
    ports: tuple[tuple[str, int], ...] | None = None
    healthy: bool | None = None
    events: tuple[EventSpec, ...] = ()

    def applied_to(self, a: Allocation, now: float) -> Allocation:
        return replace(
            a,
            status=a.status if self.status is None else self.status,
            reason=a.reason if self.reason is None else self.reason,
            exit_code=a.exit_code if self.exit_code is None else self.exit_code,
            restarts=a.restarts if self.restarts is None else self.restarts,
            pid=a.pid if self.pid is None else self.pid,
            ports=a.ports if self.ports is None else self.ports,
            healthy=a.healthy if self.healthy is None else self.healthy,
            updated_at=now,
        )


class Reports:
    def __init__(self, repo: Repo, changes: Changes, clock: Clock = SYSTEM) -> None:
        self.repo = repo
        self.changes = changes
        self.clock = clock

    async def update(self, alloc_id: str, report: AllocReport) -> Allocation:
        """Take an agent's report on one allocation."""
        for _ in range(_TRIES):
            found = await self.repo.get_alloc(alloc_id)
            if not found:
                raise NotFound(f"no allocation {alloc_id!r}")
            alloc, mod_rev = found
            if report.status is not None:
                try:
                    check_transition(alloc.status, report.status)
                except IllegalTransition as e:
                    raise Conflict(str(e)) from None
            new = report.applied_to(alloc, self.clock.time())
            if replace(new, updated_at=alloc.updated_at) == alloc and not report.events:
                return alloc
            rev = await self.repo.commit(
                compares=[self.repo.compare_alloc(alloc_id, mod_rev)],
                allocs=[new],
                events=list(report.events),
            )
            if rev is None:
                continue
            if new.terminal and not alloc.terminal:
                self.changes.committed(rev)  # resources freed, a job slot done: schedule
            elif (new.status, new.healthy, new.ports) != (alloc.status, alloc.healthy, alloc.ports):
                self.changes.mesh.advance(rev)  # endpoints changed
            return new
        raise Conflict(f"allocation {alloc_id!r} kept changing; try again")

    async def update_many(self, reports: Mapping[str, AllocReport]) -> dict[str, str]:
        """Several reports at once; ``ok`` or the error per allocation."""
        out: dict[str, str] = {}
        for alloc_id, report in reports.items():
            try:
                await self.update(alloc_id, report)
                out[alloc_id] = "ok"
            except (NotFound, Conflict) as e:
                out[alloc_id] = e.message
        return out
