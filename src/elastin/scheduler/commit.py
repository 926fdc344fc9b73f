"""What committing a ``Plan`` writes: one pure function, used by the server and by tests.

``plan_writes(state, plan, now)`` turns a plan into the allocations to write, the allocations
whose current value it read (the server guards each with its ``mod_rev``, so that a change
made in between fails the commit instead of being overwritten) and the events to record.
Every write starts from the allocation as it is in ``state`` — never from the plan's copy,
which may be older — and changes only what the plan decided:

- ``place``: new allocations, stamped with ``now``;
- ``update``: a pending allocation gets its node (or a new pending reason);
- ``stop`` / ``preempt``: ``desired="stop"`` and the reason; an allocation that never reached
  a node (or was still pending) is ``stopped`` at once, a terminal one keeps its status;
- ``lost``: a live allocation on a node that is down or gone becomes ``lost`` (not when the
  node is ready again in ``state``: a plan retried on a newer snapshot).

``apply_plan(state, plan)`` is the state after such a commit (the revision goes up by one).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from elastin.model.cluster import Allocation, AllocStatus, EventSpec
from elastin.scheduler.plan import Plan
from elastin.scheduler.state import ClusterState


@dataclass
class PlanWrites:
    allocs: dict[str, Allocation] = field(default_factory=dict)  # id -> value to write
    read: set[str] = field(default_factory=set)  # ids whose current value the writes used
    events: list[EventSpec] = field(default_factory=list)


def plan_writes(state: ClusterState, plan: Plan, now: float = 0.0) -> PlanWrites:
    out = PlanWrites()
    current = state.allocations

    def base(alloc_id: str) -> Allocation | None:
        if alloc_id in out.allocs:
            return out.allocs[alloc_id]
        found = current.get(alloc_id)
        if found is not None:
            out.read.add(alloc_id)
        return found

    for lost in plan.lost:
        a = base(lost.alloc_id)
        node = state.nodes.get(a.node_id) if a is not None else None
        if a is None or a.terminal or (node is not None and node.status == "ready"):
            continue  # gone, ended, or its node came back since the plan was made
        out.allocs[a.id] = replace(
            a, status="lost", desired="stop", reason=lost.reason, updated_at=now
        )
        out.events.append(("alloc.lost", a.label, lost.reason, "warning"))
    for a in plan.place:
        out.allocs[a.id] = replace(a, created_at=now, updated_at=now)
        if a.node_id:
            node = state.nodes.get(a.node_id)
            where = node.name if node else a.node_id
            out.events.append(("alloc.placed", a.label, f"placed on {where}", "info"))
        else:
            out.events.append(("alloc.pending", a.label, a.reason, "warning"))
    for u in plan.update:
        a = base(u.id)
        if a is None:
            continue
        out.allocs[a.id] = replace(a, node_id=u.node_id, reason=u.reason, updated_at=now)
        if u.node_id:
            out.events.append(("alloc.placed", a.label, "placed after waiting", "info"))
    stops = [(i, r, "stop") for i, r in plan.stop]
    stops += [(p.victim, p.reason, "preempt") for p in plan.preempt]
    for alloc_id, reason, kind in stops:
        a = base(alloc_id)
        if a is None:
            continue
        status: AllocStatus = a.status
        if not a.terminal and (not a.node_id or a.status == "pending"):
            status = "stopped"  # it never reached a node: stopped right here
        out.allocs[a.id] = replace(a, desired="stop", reason=reason, status=status, updated_at=now)
        if kind == "stop":
            out.events.append(("alloc.stopped", a.label, reason, "info"))
        else:
            out.events.append(("alloc.preempted", a.label, reason, "warning"))
    return out


def apply_plan(state: ClusterState, plan: Plan, now: float = 0.0) -> ClusterState:
    """The state after committing ``plan`` as the server's applier commits it."""
    writes = plan_writes(state, plan, now)
    return ClusterState(
        revision=state.revision + 1,
        nodes=state.nodes,
        apps=state.apps,
        allocations={**state.allocations, **writes.allocs},
    )
