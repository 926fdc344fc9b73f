"""Builders shared by the scheduler's unit tests (imported by module name, not a test)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

from elastin.model.cluster import Allocation, Node
from elastin.model.resources import Resources
from elastin.model.workload import Application, Workload
from elastin.scheduler import ClusterState, Plan, SchedulerOptions, apply_plan, schedule

GI = 1 << 30
MI = 1 << 20


def node(
    name: str,
    cpu: int = 4000,
    mem_gi: int = 8,
    drivers: tuple[str, ...] = ("task", "container", "vm"),
    status: str = "ready",
    **attrs: str,
) -> Node:
    return Node(
        id=f"id-{name}",
        name=name,
        capacity=Resources(cpu, mem_gi * GI, 100 * GI),
        drivers=drivers,
        attributes=tuple(sorted(attrs.items())),
        status=status,  # type: ignore[arg-type]
    )


def state(
    nodes: Iterable[Node],
    apps: Iterable[Application] = (),
    allocs: Iterable[Allocation] = (),
    versions: dict[str, dict[str, int]] | None = None,
    revision: int = 1,
) -> ClusterState:
    versions = versions or {}
    return ClusterState(
        revision=revision,
        nodes={n.id: n for n in nodes},
        apps={a.name: (a, versions.get(a.name, {w.name: 1 for w in a.workloads})) for a in apps},
        allocations={a.id: a for a in allocs},
    )


def svc(name: str, replicas: int = 1, cpu: int = 500, mem_mi: int = 256, **kw: object) -> Workload:
    return Workload(
        name=name,
        replicas=replicas,
        resources=Resources(cpu, mem_mi * MI, 0),
        **kw,  # type: ignore[arg-type]
    )


def app(name: str, *workloads: Workload) -> Application:
    return Application(name, tuple(workloads))


_IDS = itertools.count()


def new_id() -> str:
    """Unique across the whole test session, so successive passes never reuse an id."""
    return f"a{next(_IDS)}"


def run(st: ClusterState, options: SchedulerOptions | None = None, seed: int = 0) -> Plan:
    return schedule(st, options or SchedulerOptions(), random.Random(seed), new_id)


def settle(st: ClusterState, options: SchedulerOptions | None = None) -> ClusterState:
    """Schedule and apply once; the agent is taken to start what was placed."""
    plan = run(st, options)
    return apply_plan(st, plan)


def with_alloc(st: ClusterState, a: Allocation) -> ClusterState:
    allocs = dict(st.allocations)
    allocs[a.id] = a
    return ClusterState(st.revision + 1, st.nodes, st.apps, allocs)


def live(st: ClusterState) -> list[Allocation]:
    return [a for a in st.allocations.values() if a.desired == "run" and not a.terminal]
