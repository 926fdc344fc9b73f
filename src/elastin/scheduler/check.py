"""``check_plan``: re-validate a plan against a newer snapshot before it is committed.

The applier calls it when the store's revision moved after the plan was made. A placement
is still valid when its node exists and is ready and its request fits in the node's capacity
minus the requests of the node's current allocations (non-terminal, ``desired="run"``, not
released by this plan) and of the plan's other placements on that node.
"""

from __future__ import annotations

from elastin.model.cluster import Allocation
from elastin.model.resources import Resources
from elastin.scheduler.plan import Plan
from elastin.scheduler.state import ClusterState


def check_plan(plan: Plan, state: ClusterState) -> list[str]:
    """Conflicts between ``plan`` and ``state`` (an empty list means it can be committed)."""
    conflicts: list[str] = []
    released = plan.released()
    placed: dict[str, list[Allocation]] = {}
    for a in [*plan.place, *plan.update]:
        if a.node_id:
            placed.setdefault(a.node_id, []).append(a)
    for node_id, new in placed.items():
        node = state.nodes.get(node_id)
        if node is None:
            conflicts.extend(f"{a.name}: node {node_id} is gone" for a in new)
            continue
        if node.status != "ready":
            conflicts.extend(f"{a.name}: node {node.name} is {node.status}" for a in new)
            continue
        new_ids = {a.id for a in new}
        used = Resources()
        for a in state.allocs_by_node.get(node_id, ()):
            if a.id not in released and a.id not in new_ids:
                used = used + a.resources
        free = node.capacity - used
        for a in new:
            if not a.resources.fits_in(free):
                short = ", ".join(a.resources.shortfall(free))
                conflicts.append(
                    f"{a.name}: no longer fits on node {node.name} (short of {short}; "
                    f"needs {a.resources.human()}, free {free.human()})"
                )
            free = free - a.resources
    for a in plan.update:
        current = state.allocations.get(a.id)
        if current is None:
            conflicts.append(f"{a.name}: allocation {a.id} no longer exists")
        elif current.desired != "run" or current.terminal:
            conflicts.append(f"{a.name}: allocation {a.id} is now {current.status}")
    return conflicts
