"""Agents' reports on their allocations: status, reason, exit code, restarts, pid, ports,
health and events, checked against the allocation lifecycle
(``elastin.model.cluster.ALLOC_TRANSITIONS``) and committed with a compare-and-set. The
reason the server stopped an allocation for (a preemption, a scale-down) is kept over the
agent's "stopped" (``AllocReport.reason_for``).

A report that ends an allocation frees resources and may complete a job: the applier is
kicked. One that says a resize in place was refused (``resize_refused``) puts the
allocation's resources back to what its instance runs with, when they are still the refused
ones (a compare on the value, inside the commit's compare-and-set): the scheduler's accounting
and the vertical ``auto`` mode then see the instance as it runs, and the kick lets the
scheduler use the room freed. One that changes what the mesh sees (status, health, ports)
advances the mesh version, so that every proxy learns of the endpoint. A batch of reports
(what agents send) is one transaction: one revision, one wake, however many allocations it
moves.
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
from elastin.model.resources import Resources
from elastin.server.errors import Conflict, NotFound
from elastin.server.repo import Repo
from elastin.server.waits import Changes
from elastin.store.base import Compare

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
    # a resize the agent could not apply: (the resources refused, those the instance runs with)
    resize_refused: tuple[Resources, Resources] | None = None

    def applied_to(self, a: Allocation, now: float) -> Allocation:
        new = replace(
            a,
            resources=refused_back(a.resources, self.resize_refused),
            status=a.status if self.status is None else self.status,
            reason=self.reason_for(a),
            exit_code=a.exit_code if self.exit_code is None else self.exit_code,
            restarts=a.restarts if self.restarts is None else self.restarts,
            pid=a.pid if self.pid is None else self.pid,
            ports=a.ports if self.ports is None else self.ports,
            healthy=a.healthy if self.healthy is None else self.healthy,
            updated_at=now,
        )
        return replace(new, ready_at=ready_since(a, new, now))

    def reason_for(self, a: Allocation) -> str:
        """``a``'s reason after this report. The server's reason for stopping it (preempted
        by whom, scaled down, replaced, ...; set with ``desired="stop"``) is kept over the
        agent's account of doing so ("stopped", an exit code): ``elastin ps -a`` shows why
        it stopped. An instance that ended by itself meanwhile (complete, failed) says so."""
        if self.reason is None:
            return a.reason
        if a.desired == "stop" and a.reason and self.status not in ("complete", "failed"):
            return a.reason
        return self.reason


def refused_back(have: Resources, refused: tuple[Resources, Resources] | None) -> Resources:
    """The allocation's resources after its agent refused a resize (``refused``: the
    resources refused, those the instance runs with): put back to the running ones when they
    are still the refused ones; a later resize (another size since) is left for the agent."""
    if refused is None:
        return have
    no, running = refused
    if (have.cpu, have.memory) != (no.cpu, no.memory):
        return have
    return replace(have, cpu=running.cpu, memory=running.memory)


def ready_since(old: Allocation, new: Allocation, now: float) -> float:
    """When ``new`` became ready (``Allocation.ready_at``): stamped when it starts running
    and again when its health check first passes (a checked instance is ready from then),
    cleared when it stops running or turns unhealthy (``model/rollout.ready`` adds the
    ``min_healthy_time``)."""
    if new.status != "running" or new.healthy is False:
        return 0.0
    if old.status != "running" or (new.healthy is True and old.healthy is not True):
        return now
    return old.ready_at or now


class Reports:
    def __init__(self, repo: Repo, changes: Changes, clock: Clock = SYSTEM) -> None:
        self.repo = repo
        self.changes = changes
        self.clock = clock

    @staticmethod
    def _next(alloc: Allocation, report: AllocReport, now: float) -> Allocation | None:
        """``alloc`` after ``report`` (None when nothing changes); an illegal move raises."""
        if report.status is not None:
            try:
                check_transition(alloc.status, report.status)
            except IllegalTransition as e:
                raise Conflict(str(e)) from None
        new = report.applied_to(alloc, now)
        if replace(new, updated_at=alloc.updated_at) == alloc:
            return None
        return new

    def _signal(self, changed: list[tuple[Allocation, Allocation]], rev: int) -> None:
        """Wake who a commit of ``(old, new)`` allocations concerns, once per commit."""
        if any(
            (new.terminal and not old.terminal)
            or (new.ready_at and not old.ready_at)
            or new.resources != old.resources
            for old, new in changed
        ):  # resources freed (or put back), a job slot done, an instance ready: schedule
            self.changes.committed(rev)
        elif any(
            (new.status, new.healthy, new.ports) != (old.status, old.healthy, old.ports)
            for old, new in changed
        ):
            self.changes.mesh.advance(rev)  # endpoints changed

    async def update(self, alloc_id: str, report: AllocReport) -> Allocation:
        """Take an agent's report on one allocation."""
        for _ in range(_TRIES):
            found = await self.repo.get_alloc(alloc_id)
            if not found:
                raise NotFound(f"no allocation {alloc_id!r}")
            alloc, mod_rev = found
            new = self._next(alloc, report, self.clock.time())
            if new is None and not report.events:
                return alloc
            rev = await self.repo.commit(
                compares=[self.repo.compare_alloc(alloc_id, mod_rev)],
                allocs=[new] if new is not None else [],
                events=list(report.events),
            )
            if rev is None:
                continue
            if new is not None:
                self._signal([(alloc, new)], rev)
            return new or alloc
        raise Conflict(f"allocation {alloc_id!r} kept changing; try again")

    async def update_many(self, reports: Mapping[str, AllocReport]) -> dict[str, str]:
        """Several reports at once, committed in one transaction (one revision, one wake
        for the applier and the mesh feed); ``ok`` or the error per allocation. When an
        allocation changed in between, the batch is taken one report at a time."""
        out: dict[str, str] = {}
        changed: list[tuple[Allocation, Allocation]] = []
        compares: list[Compare] = []
        events: list[EventSpec] = []
        now = self.clock.time()
        for alloc_id, report in reports.items():
            found = await self.repo.get_alloc(alloc_id)
            if not found:
                out[alloc_id] = f"no allocation {alloc_id!r}"
                continue
            alloc, mod_rev = found
            try:
                new = self._next(alloc, report, now)
            except Conflict as e:
                out[alloc_id] = e.message
                continue
            out[alloc_id] = "ok"
            if new is None and not report.events:
                continue
            compares.append(self.repo.compare_alloc(alloc_id, mod_rev))
            events += report.events
            if new is not None:
                changed.append((alloc, new))
        if not compares:
            return out
        rev = await self.repo.commit(
            compares=compares, allocs=[new for _, new in changed], events=events
        )
        if rev is not None:
            self._signal(changed, rev)
            return out
        for alloc_id, report in reports.items():  # something moved: one at a time
            if out.get(alloc_id) != "ok":
                continue
            try:
                await self.update(alloc_id, report)
            except (NotFound, Conflict) as e:
                out[alloc_id] = e.message
        return out
