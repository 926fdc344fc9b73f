"""Resource accounting: the mission's formulas, per kind, per node and for the cluster.

For each kind the requested total is one instance's request times its instance count
(``Workload.instances``: replicas for a service, parallelism for a job), summed over the
workloads of that kind, for cpu, memory and disk alike:

    virtual servers  (vm)         R_total = Σ R_i × V_i
    containers       (container)  C_total = Σ C_i × D_i
    automation tasks (task)       A_total = Σ A_i × E_i

An instance resized in place (vertical scaling) counts with its allocation's resources: the
term of a workload sums, per instance index, the request of the live allocation holding it
(the spec's where none does), and its ``request`` is the one they share (the spec's when they
differ).

Beside it, *allocated* is the sum of the requests of placed, non-terminal allocations with
``desired="run"`` (what the nodes have reserved), and *measured* the sum of the last usage
samples of those allocations. Per node: capacity, allocated, free (capacity - allocated) and
measured. The cluster line sums the ready nodes. ``to_data(report)`` gives its JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from elastin.model.cluster import Allocation, Usage
from elastin.model.resources import Resources
from elastin.model.workload import KINDS, Kind, Workload
from elastin.scheduler.state import ClusterState

FORMULAS: dict[str, tuple[str, str]] = {
    "vm": ("virtual servers", "R_total = Σ R_i × V_i"),
    "container": ("containers", "C_total = Σ C_i × D_i"),
    "task": ("automation tasks", "A_total = Σ A_i × E_i"),
}


@dataclass(frozen=True)
class Term:
    """One workload's term of its kind's formula: ``request × instances = total``."""

    app: str
    workload: str
    request: Resources
    instances: int
    total: Resources


@dataclass(frozen=True)
class KindReport:
    kind: Kind
    label: str
    formula: str
    requested: Resources
    allocated: Resources
    measured: Usage
    terms: tuple[Term, ...] = ()


@dataclass(frozen=True)
class NodeReport:
    node_id: str
    name: str
    status: str
    capacity: Resources
    allocated: Resources
    free: Resources
    measured: Usage
    allocations: int


@dataclass(frozen=True)
class ClusterReport:
    nodes: int  # ready nodes summed below
    capacity: Resources
    allocated: Resources
    free: Resources
    measured: Usage
    allocations: int


@dataclass(frozen=True)
class ResourceReport:
    revision: int
    kinds: tuple[KindReport, ...]
    nodes: tuple[NodeReport, ...]
    cluster: ClusterReport


def _add_usage(a: Usage, b: Usage) -> Usage:
    return Usage(
        a.cpu + b.cpu, a.memory + b.memory, a.disk + b.disk, max(a.sampled_at, b.sampled_at)
    )


def _res(acc: list[float]) -> Resources:
    return Resources(int(acc[0]), int(acc[1]), int(acc[2]))


def _use(acc: list[float]) -> Usage:
    return Usage(float(acc[3]), int(acc[4]), int(acc[5]))


def _holds(a: Allocation) -> bool:
    return bool(a.node_id) and a.desired == "run" and not a.terminal


def _term(state: ClusterState, app: str, w: Workload) -> Term:
    """``w``'s term: per instance the request of the live allocation of its current version
    holding its index (one resized in place), else the spec's."""
    held: dict[int, Resources] = {}
    version = state.version(app, w.name)
    for a in state.allocs_by_workload.get((app, w.name), ()):
        current = a.spec_version == version and a.index < w.instances
        if current and _holds(a) and a.resources.memory:
            held.setdefault(a.index, a.resources)
    each = [held.get(i, w.resources) for i in range(w.instances)]
    total = Resources()
    for r in each:
        total = total + r
    request = each[0] if each and all(r == each[0] for r in each) else w.resources
    return Term(app, w.name, request, w.instances, total)


def resource_report(
    state: ClusterState, usage_by_alloc: Mapping[str, Usage] | None = None
) -> ResourceReport:
    """Requested (by formula), allocated and measured resources of ``state``.

    ``usage_by_alloc`` maps allocation ids to their last sample; without it each
    allocation's own ``usage`` field is used.
    """

    def usage_of(a: Allocation) -> Usage:
        if usage_by_alloc is None:
            return a.usage
        return usage_by_alloc.get(a.id, Usage())

    terms: dict[str, list[Term]] = {k: [] for k in KINDS}
    for name in sorted(state.apps):
        app, _ = state.apps[name]
        for w in app.workloads:
            terms[w.kind].append(_term(state, name, w))
    # running sums as plain ints: cpu, memory, disk, measured cpu, memory, disk, count
    by_kind: dict[str, list[float]] = {k: [0, 0, 0, 0.0, 0, 0, 0] for k in KINDS}
    by_node: dict[str, list[float]] = {}
    for a in state.allocations.values():
        if not _holds(a):
            continue
        u = usage_of(a)
        r = a.resources
        for acc in (by_kind[a.kind], by_node.setdefault(a.node_id, [0, 0, 0, 0.0, 0, 0, 0])):
            acc[0] += r.cpu
            acc[1] += r.memory
            acc[2] += r.disk
            acc[3] += u.cpu
            acc[4] += u.memory
            acc[5] += u.disk
            acc[6] += 1
    allocated = {k: _res(v) for k, v in by_kind.items()}
    measured = {k: _use(v) for k, v in by_kind.items()}
    node_alloc = {k: _res(v) for k, v in by_node.items()}
    node_measured = {k: _use(v) for k, v in by_node.items()}
    node_count = {k: int(v[6]) for k, v in by_node.items()}
    kinds = []
    for k in ("vm", "container", "task"):
        label, formula = FORMULAS[k]
        requested = Resources()
        for t in terms[k]:
            requested = requested + t.total
        kinds.append(
            KindReport(k, label, formula, requested, allocated[k], measured[k], tuple(terms[k]))
        )
    nodes = []
    cap_sum, alloc_sum, meas_sum, count_sum, ready = Resources(), Resources(), Usage(), 0, 0
    for node in sorted(state.nodes.values(), key=lambda n: n.name):
        al = node_alloc.get(node.id, Resources())
        ms = node_measured.get(node.id, Usage())
        cnt = node_count.get(node.id, 0)
        nodes.append(
            NodeReport(
                node.id, node.name, node.status, node.capacity, al, node.capacity - al, ms, cnt
            )
        )
        if node.status == "ready":
            ready += 1
            cap_sum = cap_sum + node.capacity
            alloc_sum = alloc_sum + al
            meas_sum = _add_usage(meas_sum, ms)
            count_sum += cnt
    cluster = ClusterReport(ready, cap_sum, alloc_sum, cap_sum - alloc_sum, meas_sum, count_sum)
    return ResourceReport(state.revision, tuple(kinds), tuple(nodes), cluster)
