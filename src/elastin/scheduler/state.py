"""``ClusterState``: the immutable snapshot the scheduler decides on.

A snapshot is the store's revision, the nodes, the applications (each with the spec version
of every workload) and the allocations. Construction only keeps references to the mappings it
is given; the indexes the scheduler and ``check_plan`` need (allocations by node, by
application and workload) are built on first use and cached on the instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from elastin.model.cluster import Allocation, Node
from elastin.model.workload import Application

AppEntry = tuple[Application, Mapping[str, int]]
"""An application and its spec versions: workload name -> spec version."""


@dataclass(frozen=True)
class ClusterState:
    """One consistent view of the cluster at store revision ``revision``.

    The mappings must not be mutated after the state is built (the cached indexes would go
    stale); build a new ``ClusterState`` for a new snapshot.
    """

    revision: int
    nodes: Mapping[str, Node]
    apps: Mapping[str, AppEntry]
    allocations: Mapping[str, Allocation]
    now: float = 0.0  # the server's clock when the snapshot was taken (rollouts' readiness)
    held: frozenset[tuple[str, str]] = frozenset()  # (app, workload): canaries await promotion
    # (app, workload): since when its current version is current (or it was scaled); a failed
    # instance from before no longer holds its slot
    since: Mapping[tuple[str, str], float] = field(default_factory=dict)

    @cached_property
    def allocs_by_node(self) -> Mapping[str, tuple[Allocation, ...]]:
        """Allocations holding resources on a node: non-terminal, desired ``run``, placed."""
        out: dict[str, list[Allocation]] = {}
        for a in self.allocations.values():
            if a.node_id and a.desired == "run" and not a.terminal:
                out.setdefault(a.node_id, []).append(a)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def allocs_by_workload(self) -> Mapping[tuple[str, str], tuple[Allocation, ...]]:
        """Every allocation (any status) by ``(app, workload)``."""
        out: dict[tuple[str, str], list[Allocation]] = {}
        for a in self.allocations.values():
            out.setdefault((a.app, a.workload), []).append(a)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def allocs_by_app(self) -> Mapping[str, tuple[Allocation, ...]]:
        """Every allocation (any status) by application name."""
        out: dict[str, list[Allocation]] = {}
        for a in self.allocations.values():
            out.setdefault(a.app, []).append(a)
        return {k: tuple(v) for k, v in out.items()}

    def version(self, app: str, workload: str) -> int:
        """The current spec version of ``app``/``workload`` (0 when unknown)."""
        entry = self.apps.get(app)
        return entry[1].get(workload, 0) if entry else 0
