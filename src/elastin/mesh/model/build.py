"""Build one node's ``MeshSnapshot`` from applications and allocations (pure).

* Every named port of every service is a cluster ``<app>.<service>.<port>`` with the
  service's ``mesh`` policy; its endpoints are the service's running instances that have that
  port, at their node's address. An instance is *ready* when it runs and — if its service has
  a health check — its last verdict is healthy. Instances on this node are marked local.
* Every upstream of an instance on this node is a listener of its own: the agent picked a
  loopback port for it when it started the instance (kept in the allocation's ports as
  ``upstream.<service>``) and passed it as ``ELASTIN_UPSTREAM_<SERVICE>``. The listener's
  ``owner`` is the calling workload, so the proxy knows the caller from where the call arrived.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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


def cluster_name(app: str, service: str, port: str) -> str:
    return f"{app}.{service}.{port}"


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
    for app_name in sorted(apps):
        app = apps[app_name]
        for w in app.workloads:
            if w.type != "service":
                continue
            mine = sorted(
                (a for a in live if a.app == app_name and a.workload == w.name),
                key=lambda a: (a.index, a.id),
            )
            for port in w.ports:
                endpoints = []
                for a in mine:
                    number = dict(a.ports).get(port.name)
                    if not number or a.status != "running":
                        continue
                    ready = a.healthy is True if w.health is not None else a.healthy is not False
                    endpoints.append(
                        Endpoint(
                            id=f"{a.id}-{port.name}",
                            address=node_addresses.get(a.node_id, "127.0.0.1"),
                            port=number,
                            node=a.node_id,
                            ready=ready,
                            local=a.node_id == node_id,
                        )
                    )
                name = cluster_name(app_name, w.name, port.name)
                clusters.append(_cluster(name, w, port.protocol, tuple(endpoints)))
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
                )
            )
    return MeshSnapshot(version, node_id, tuple(listeners), tuple(clusters), metrics_port)
