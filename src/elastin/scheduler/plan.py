"""``Plan`` (what one scheduling pass decided) and ``SchedulerOptions`` (how it decides).

A plan is data only: the applier in the server commits it with a revision check, after
``check_plan`` when the store moved. What a plan writes is decided by one pure function,
``commit.plan_writes``, used both by the server's applier and by ``apply_plan`` (the same
commit done on a ``ClusterState``, for tests, simulations and the benchmark).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from elastin.model.cluster import Allocation
from elastin.scheduler.errors import InvalidOptions

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


@dataclass(frozen=True)
class Preemption:
    """``victim`` is evicted so that allocation ``by`` (placed or updated by the same plan)
    fits on its node; ``reason`` says so in words."""

    victim: str
    by: str
    reason: str


@dataclass(frozen=True)
class Lost:
    """Allocation ``alloc_id`` was on a node that is down or gone: it is ``lost``."""

    alloc_id: str
    reason: str


@dataclass
class Plan:
    """The decisions of one scheduling pass on the snapshot at revision ``base_rev``.

    ``place``: new allocations, placed (``node_id`` set) or pending (``node_id == ""``,
    ``reason`` says why nothing fits). ``update``: existing pending allocations now placed,
    or whose pending reason changed. ``stop``: ``(allocation id, reason)``. ``preempt``:
    who is evicted for whom. ``lost``: live allocations on nodes that are down or gone.
    """

    base_rev: int
    place: list[Allocation] = field(default_factory=list)
    update: list[Allocation] = field(default_factory=list)
    stop: list[tuple[str, str]] = field(default_factory=list)
    preempt: list[Preemption] = field(default_factory=list)
    lost: list[Lost] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.place or self.update or self.stop or self.preempt or self.lost)

    def released(self) -> set[str]:
        """Allocations this plan takes off their nodes (stopped, preempted or lost)."""
        return (
            {i for i, _ in self.stop}
            | {p.victim for p in self.preempt}
            | {x.alloc_id for x in self.lost}
        )

    def summary(self) -> str:
        placed = sum(1 for a in self.place if a.node_id)
        return (
            f"place {placed}, pending {len(self.place) - placed}, update {len(self.update)}, "
            f"stop {len(self.stop)}, preempt {len(self.preempt)}, lost {len(self.lost)}"
        )
