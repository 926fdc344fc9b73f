"""Build one node's ``MeshSnapshot`` from applications and allocations (pure).

* Every port of the service registry (``registry.py``) is a cluster
  ``<app>.<service>.<port>`` with the service's ``mesh`` policy and the registry's endpoints
  for it, those on this node marked local.
* Every upstream of an instance on this node is a listener of its own: the agent picked a
  loopback port for it when it started the instance (kept in the allocation's ports as
  ``upstream.<service>``) and passed it as ``ELASTIN_UPSTREAM_<SERVICE>``. The listener's
  ``owner`` is the calling workload, so the proxy knows the caller from where the call arrived.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from elastin.mesh.model.registry import cluster_name, registry
from elastin.mesh.model.types import (
    CircuitBreaker,
    Cluster,
    Endpoint,
    Listener,
    MeshSnapshot,
    OutlierDetection,
    RetryPolicy,
    Timeouts,
)
from elastin.model.cluster import Allocation
from elastin.model.workload import Application, MeshPolicy, Workload

UPSTREAM_PREFIX = "upstream."


def _cluster(name: str, w: Workload, protocol: str, endpoints: tuple[Endpoint, ...]) -> Cluster:
    p: MeshPolicy = w.mesh
    return Cluster(
        name=name,
        protocol=protocol,  # type: ignore[arg-type]
        lb=p.lb,
        hash_key=p.hash_key,
        endpoints=endpoints,
        timeouts=Timeouts(p.connect_timeout, p.request_timeout, p.idle_timeout),
        retries=RetryPolicy(attempts=p.retries, on=p.retry_on),
        breaker=CircuitBreaker(max_connections=p.max_connections, max_queue=p.max_queue),
        outlier=OutlierDetection(
            consecutive_errors=max(1, p.consecutive_errors), enabled=p.consecutive_errors > 0
        ),
        rate_limit=p.rate_limit,
    )


def build_snapshot(
    version: int,
    node_id: str,
    apps: Mapping[str, Application],
    allocations: Iterable[Allocation],
    node_addresses: Mapping[str, str],
    metrics_port: int = 0,
) -> MeshSnapshot:
    live = [a for a in allocations if a.desired == "run" and not a.terminal]
    clusters: list[Cluster] = []
    for entry in registry(apps, live, node_addresses):
        w = apps[entry.app].workload(entry.name)
        assert w is not None
        for port in entry.ports:
            endpoints = tuple(
                Endpoint(
                    id=e.id,
                    address=e.address,
                    port=e.port,
                    weight=e.weight,
                    node=e.node,
                    ready=e.ready,
                    local=e.node == node_id,
                )
                for e in port.endpoints
            )
            clusters.append(_cluster(port.cluster, w, port.protocol, endpoints))
    names = {c.name for c in clusters}
    listeners: list[Listener] = []
    for a in sorted(live, key=lambda a: a.id):
        if a.node_id != node_id:
            continue
        caller_app = apps.get(a.app)
        caller = caller_app.workload(a.workload) if caller_app else None
        if caller_app is None or caller is None:
            continue
        ports = dict(a.ports)
        for up in caller.upstreams:
            target = caller_app.workload(up)
            number = ports.get(UPSTREAM_PREFIX + up)
            if target is None or not target.ports or not number:
                continue
            first = target.ports[0]
            cname = cluster_name(a.app, up, first.name)
            if cname not in names:
                continue
            listeners.append(
                Listener(
                    name=f"{a.id}.{up}",
                    port=number,
                    cluster=cname,
                    protocol=first.protocol,
                    owner=f"{a.app}/{a.workload}",
                    fault=target.mesh.fault,
                )
            )
    return MeshSnapshot(version, node_id, tuple(listeners), tuple(clusters), metrics_port)
