"""``Plan`` (what one scheduling pass decided) and ``SchedulerOptions`` (how it decides).

A plan is data only: the applier in the server commits it with a revision check, after
``check_plan`` when the store moved. ``apply_plan`` is the same commit done purely on a
``ClusterState`` - for tests, simulations and the benchmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from elastin.model.cluster import Allocation
from elastin.scheduler.errors import InvalidOptions
from elastin.scheduler.state import ClusterState

Algorithm = Literal["binpack", "spread"]


@dataclass(frozen=True)
class SchedulerOptions:
    """How placements are ranked and how far the search goes.

    ``algorithm``: ``binpack`` fills nodes (fewer, fuller machines) and ``spread`` empties
    them (more headroom per instance). ``preemption``: allow a placement that fits nowhere to
    evict allocations at least ``preemption_gap`` priority points lower. ``limit``: how many
    feasible nodes to rank per placement; 0 picks ``max(2, ceil(log2(nodes)))``.
    """

    algorithm: Algorithm = "binpack"
    preemption: bool = True
    limit: int = 0
    preemption_gap: int = 10

    def __post_init__(self) -> None:
        if self.algorithm not in ("binpack", "spread"):
            raise InvalidOptions(
                f"unknown scheduling algorithm {self.algorithm!r}; use 'binpack' or 'spread'"
            )
        if self.limit < 0:
            raise InvalidOptions(
                f"candidate limit must be 0 (automatic) or positive, not {self.limit}"
            )
        if self.preemption_gap < 1:
            raise InvalidOptions(f"preemption gap must be at least 1, not {self.preemption_gap}")

    def candidate_limit(self, nodes: int) -> int:
        """Feasible nodes ranked per placement for a cluster of ``nodes`` nodes."""
        if self.limit:
            return self.limit
        return max(2, math.ceil(math.log2(nodes))) if nodes > 1 else 2


@dataclass
class Plan:
    """The decisions of one scheduling pass on the snapshot at revision ``base_rev``.

    ``place``: new allocations, placed (``node_id`` set) or pending (``node_id == ""``,
    ``reason`` says why nothing fits). ``update``: existing pending allocations now placed,
    or whose pending reason changed. ``stop`` and ``preempt``: ``(allocation id, reason)``.
    """

    base_rev: int
    place: list[Allocation] = field(default_factory=list)
    update: list[Allocation] = field(default_factory=list)
    stop: list[tuple[str, str]] = field(default_factory=list)
    preempt: list[tuple[str, str]] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.place or self.update or self.stop or self.preempt)

    def summary(self) -> str:
        placed = sum(1 for a in self.place if a.node_id)
        return (
            f"place {placed}, pending {len(self.place) - placed}, update {len(self.update)}, "
            f"stop {len(self.stop)}, preempt {len(self.preempt)}"
        )


def apply_plan(state: ClusterState, plan: Plan) -> ClusterState:
    """The state after committing ``plan``, as the server's applier commits it.

    Placements and updates are written as they are; stopped and preempted allocations get
    ``desired="stop"`` and their reason (and ``status="stopped"`` if they never reached a
    node or were still pending). The revision goes up by one.
    """
    allocs = dict(state.allocations)
    for a in plan.place:
        allocs[a.id] = a
    for a in plan.update:
        allocs[a.id] = a
    for alloc_id, reason in [*plan.stop, *plan.preempt]:
        old = allocs.get(alloc_id)
        if old is None:
            continue
        status = old.status
        if not old.terminal and (not old.node_id or old.status == "pending"):
            status = "stopped"
        allocs[alloc_id] = replace(old, desired="stop", reason=reason, status=status)
    return ClusterState(
        revision=state.revision + 1, nodes=state.nodes, apps=state.apps, allocations=allocs
    )
