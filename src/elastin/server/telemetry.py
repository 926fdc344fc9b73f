"""What agents measure, kept in memory (never in the store): usage per allocation and per
node, and every node's proxy counters per mesh service port.

Each heartbeat replaces what its node said before, so the usage of an allocation that is gone
from its node disappears with the next heartbeat, and a node marked down (``forget``) takes
its numbers with it. ``traffic()`` sums the proxies' counters per service port for
``elastin traffic`` and ``/v1/mesh/traffic``.

``windows`` (``server/windows.py``) keeps the agents' one-second metrics reports (``POST
/v1/nodes/{id}/metrics``): five minutes at 1 s per instance and per service port, what
``GET /v1/metrics/services/{app}/{service}``, ``elastin top`` and the autoscaler read. A
report is taken only from a node that sent a heartbeat to this server (``knows``), and only
for what the store has (``vet_report``): the instances of allocations placed on that node,
their app and workload the allocation's (never the report's), and the proxy's share of each
live allocation of the port's service; a node marked down leaves the windows with the rest of
its numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from elastin.clock import SYSTEM, Clock
from elastin.mesh.model.traffic import ClusterStats
from elastin.model.cluster import Allocation, Usage
from elastin.server.windows import NodeReport, Windows

TRAFFIC_COUNTERS = (
    "requests",
    "errors",
    "connect_errors",
    "retries",
    "in_flight",
    "endpoints_up",
    "avg_response_ms",
)


def vet_report(report: NodeReport, node_id: str, allocs: Mapping[str, Allocation]) -> NodeReport:
    """``report`` of node ``node_id`` with only what the store has (``allocs``: allocation id
    -> allocation, live ones): instances of allocations on that node, their app and workload
    the allocation's; endpoints of allocations of the port's service. Anything else (an id
    unknown, of another node or another service) is left out: it would show as a replica
    that does not exist, or overwrite another node's (pure)."""
    instances = {}
    for alloc_id, i in report.instances.items():
        a = allocs.get(alloc_id)
        if a is None or a.node_id != node_id:
            continue
        if (i.app, i.workload) != (a.app, a.workload):
            i = replace(i, app=a.app, workload=a.workload)
        instances[alloc_id] = i
    ports = {}
    for key, p in report.ports.items():
        app, service = p.name.app, p.name.service
        ours = {
            alloc_id: e
            for alloc_id, e in p.endpoints.items()
            if (a := allocs.get(alloc_id)) is not None and (a.app, a.workload) == (app, service)
        }
        ports[key] = p if len(ours) == len(p.endpoints) else replace(p, endpoints=ours)
    return replace(report, instances=instances, ports=ports)


class Telemetry:
    def __init__(self, clock: Clock = SYSTEM) -> None:
        self.windows = Windows(clock)
        self._usage: dict[str, dict[str, Usage]] = {}  # node -> allocation -> usage
        self._node_usage: dict[str, Usage] = {}
        self._mesh: dict[str, dict[str, ClusterStats]] = {}  # node -> cluster -> counters
        self._allocs: tuple[int, dict[str, Allocation]] = (-1, {})  # version -> live ones
        self._on_report: list[Callable[[NodeReport], None]] = []

    def on_report(self, listener: Callable[[NodeReport], None]) -> None:
        """Call ``listener(report)`` after each metrics report is kept (the autoscaler's
        wake-up: it evaluates right after fresh numbers, not up to a second later; at once
        after an ``early`` one, for the services whose load jumped)."""
        self._on_report.append(listener)

    def record(
        self,
        node_id: str,
        usage: Mapping[str, Usage],
        node_usage: Usage | None,
        mesh: Mapping[str, ClusterStats] | None,
    ) -> None:
        """A heartbeat's numbers: they replace what ``node_id`` said before."""
        self._usage[node_id] = dict(usage)
        if node_usage is not None:
            self._node_usage[node_id] = node_usage
        if mesh is not None:
            self._mesh[node_id] = dict(mesh)

    def forget(self, node_id: str) -> None:
        """Node ``node_id`` is down: its numbers are not current any more."""
        self._usage.pop(node_id, None)
        self._node_usage.pop(node_id, None)
        self._mesh.pop(node_id, None)
        self.windows.forget(node_id)

    def knows(self, node_id: str) -> bool:
        """Whether ``node_id`` sent a heartbeat to this server (and is not marked down)."""
        return node_id in self._usage

    def record_metrics(self, node_id: str, report: NodeReport) -> None:
        """A metrics report of a node this server knows (``knows``), vetted
        (``vet_report``). ``ClockSkew`` when its clock is far from the server's."""
        self.windows.record(node_id, report)
        for listener in self._on_report:
            listener(report)

    def live_allocations(self, version: int, allocs: Iterable[Allocation]) -> dict[str, Allocation]:
        """The live ones of ``allocs`` (the mesh feed's, of mesh ``version``) by id, built
        once per version for ``vet_report``."""
        if self._allocs[0] != version:
            self._allocs = (version, {a.id: a for a in allocs if not a.terminal})
        return self._allocs[1]

    def usage(self) -> dict[str, Usage]:
        """Measured usage per allocation id, over every node."""
        out: dict[str, Usage] = {}
        for per_node in self._usage.values():
            out.update(per_node)
        return out

    def node_usage(self, node_id: str) -> Usage:
        return self._node_usage.get(node_id, Usage())

    def with_usage(self, a: Allocation) -> Allocation:
        """``a`` with its last measured usage (live allocations only)."""
        u = self._usage.get(a.node_id, {}).get(a.id)
        if u is None or a.terminal:
            return a
        return replace(a, usage=u)

    def mesh(self) -> dict[str, dict[str, ClusterStats]]:
        """Every node's proxy counters per mesh cluster."""
        return {n: dict(s) for n, s in self._mesh.items()}

    def traffic(self) -> list[dict[str, Any]]:
        """Requests, errors and retries per service port, summed over every node's proxy
        (counters since each proxy started; ``elastin traffic`` turns them into rates)."""
        total: dict[str, dict[str, Any]] = {}
        for node_id, stats in self._mesh.items():
            for name, st in stats.items():
                t = total.setdefault(
                    name,
                    {"cluster": name, **st.labels, "mode": st.mode, "nodes": []}
                    | dict.fromkeys(TRAFFIC_COUNTERS, 0),
                )
                t["nodes"].append(node_id)
                t["requests"] += st.requests
                t["errors"] += st.errors
                t["connect_errors"] += st.connect_errors
                t["retries"] += st.retries
                t["in_flight"] += st.active
                t["endpoints_up"] += sum(1 for e in st.endpoints if e.status.startswith("UP"))
                t["avg_response_ms"] = max(t["avg_response_ms"], st.avg_response_ms)
        return [total[k] for k in sorted(total)]
