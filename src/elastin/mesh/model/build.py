"""Build one node's ``MeshSnapshot`` from applications and allocations (pure).

* Every port of the service registry (``registry.py``) is a cluster
  ``<app>.<service>.<port>`` with the service's ``mesh`` policy and the registry's endpoints
  for it, those on this node marked local.
* Every upstream of an instance on this node is a listener of its own: the agent picked a
  loopback port for it when it started the instance (kept in the allocation's ports as
  ``upstream.<service>``) and passed it as ``ELASTIN_UPSTREAM_<SERVICE>``. The listener's
  ``owner`` is the calling workload, so the proxy knows the caller from where the call arrived.

One application's data cannot take the others' mesh down: an application whose clusters or
listeners cannot be built (data the validation did not catch, a bug) is left out, logged with
its traceback, and every other application keeps its part.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import replace

from elastin.mesh.model.registry import ServiceEntry, cluster_name, registry
from elastin.mesh.model.types import (
    HOLD_MAX_MOST,
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

log = logging.getLogger("elastin.mesh")

UPSTREAM_PREFIX = "upstream."
# scale to zero: the requests one proxy holds for a service while a replica starts, unless
# the service's mesh.max_queue says otherwise (docs/mesh.md, "Scale to zero")
HOLD_MAX = 100


def scales_to_zero(w: Workload, protocol: str) -> bool:
    """Whether the mesh holds requests to ``w``'s ``protocol`` port while it has no replica:
    its horizontal autoscaling has ``min: 0`` (the spec allows that only for HTTP and gRPC
    ports; a TCP port is never held)."""
    auto = w.autoscale
    return (
        w.type == "service"
        and auto is not None
        and auto.horizontal
        and auto.min == 0
        and protocol != "tcp"
    )


def measures_p99(w: Workload, protocol: str) -> bool:
    """Whether the proxies count ``w``'s ``protocol`` port's responses in a latency histogram:
    its horizontal autoscaling follows a ``p99`` metric (only then: the histogram costs a few
    rules per request). A TCP port has no response time to count."""
    auto = w.autoscale
    return (
        w.type == "service"
        and auto is not None
        and auto.horizontal
        and any(m.kind == "p99" for m in auto.metrics)
        and protocol != "tcp"
    )


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
        # a request waits for a free connection (``max_connections``) as long as it may wait
        # for its answer: a backlog (a scale-up on its way) stays queued for the replicas
        # that come, rather than failing after a second
        breaker=CircuitBreaker(
            max_connections=p.max_connections,
            max_queue=p.max_queue,
            queue_timeout=p.request_timeout,
        ),
        outlier=OutlierDetection(
            consecutive_errors=max(1, p.consecutive_errors), enabled=p.consecutive_errors > 0
        ),
        rate_limit=p.rate_limit,
        access_log=p.access_log,
        access_log_sample=p.access_log_sample,
        slow=p.slow,
        trace_sample=p.trace_sample,
        max_request_headers=p.max_request_headers,
        max_request_header_bytes=p.max_request_header_bytes,
        # a held request waits for a replica at most as long as for an answer
        scale_to_zero=scales_to_zero(w, protocol),
        hold_timeout=max(1.0, p.request_timeout),
        hold_max=min(p.max_queue or HOLD_MAX, HOLD_MAX_MOST),
        latency_histogram=measures_p99(w, protocol),
    )


def build_clusters(
    apps: Mapping[str, Application],
    allocations: Iterable[Allocation],
    node_addresses: Mapping[str, str],
    node_id: str = "",
) -> tuple[Cluster, ...]:
    """Every service port's cluster; endpoints on ``node_id`` are marked local (none when it
    is "": the form shared by every node, see ``localize``). An application whose clusters
    cannot be built is left out (logged)."""
    live: dict[str, list[Allocation]] = {}
    for a in allocations:
        if a.desired == "run" and not a.terminal:
            live.setdefault(a.app, []).append(a)
    clusters: list[Cluster] = []
    for name in sorted(apps):
        try:
            clusters += _app_clusters(name, apps[name], live.get(name, []), node_addresses, node_id)
        except Exception as e:
            left_out(f"application {name}", "its clusters cannot be built", e)
    return tuple(clusters)


def guarded_registry(
    apps: Mapping[str, Application],
    allocations: Iterable[Allocation],
    node_addresses: Mapping[str, str],
) -> tuple[ServiceEntry, ...]:
    """``registry`` application by application: one that cannot be listed is left out
    (logged) instead of failing the registry of every application."""
    live: dict[str, list[Allocation]] = {}
    for a in allocations:
        live.setdefault(a.app, []).append(a)
    out: list[ServiceEntry] = []
    for name in sorted(apps):
        try:
            out += registry({name: apps[name]}, live.get(name, []), node_addresses)
        except Exception as e:
            left_out(f"application {name}", "its services cannot be listed", e)
    return tuple(out)


_told: dict[tuple[str, str, str], None] = {}  # what was logged with its traceback (bounded)


def left_out(what: str, why: str, e: Exception) -> None:
    """Log that the mesh leaves ``what`` out: with the traceback the first time for this
    reason, in one line after (the feed builds every version, for every node)."""
    key = (what, why, f"{type(e).__name__}: {e}")
    if key in _told:
        log.warning("the mesh leaves %s out: %s (%s)", what, why, key[2])
        return
    if len(_told) >= 1024:
        _told.clear()
    _told[key] = None
    log.error("the mesh leaves %s out: %s", what, why, exc_info=e)


def _app_clusters(
    name: str,
    app: Application,
    live: list[Allocation],
    node_addresses: Mapping[str, str],
    node_id: str,
) -> list[Cluster]:
    clusters: list[Cluster] = []
    for entry in registry({name: app}, live, node_addresses):
        w = app.workload(entry.name)
        if w is None:
            raise ValueError(f"the registry names a workload {entry.name!r} the app lacks")
        for port in entry.ports:
            endpoints = tuple(
                Endpoint(
                    id=e.id,
                    address=e.address,
                    port=e.port,
                    weight=e.weight,
                    node=e.node,
                    ready=e.ready,
                    local=bool(node_id) and e.node == node_id,
                )
                for e in port.endpoints
            )
            clusters.append(_cluster(port.cluster, w, port.protocol, endpoints))
    return clusters


def build_listeners(
    node_id: str,
    apps: Mapping[str, Application],
    allocations: Iterable[Allocation],
    clusters: Iterable[str],
) -> tuple[Listener, ...]:
    """The upstream listeners of the callers on ``node_id`` (to the clusters named). The
    listeners of an allocation that cannot be built are left out (logged)."""
    # a set is used as it is: the feed builds every node's listeners with one set of names
    names = clusters if isinstance(clusters, (set, frozenset)) else set(clusters)
    listeners: list[Listener] = []
    mine = (a for a in allocations if a.node_id == node_id)
    for a in sorted(mine, key=lambda a: a.id):
        if a.desired != "run" or a.terminal:
            continue
        try:
            listeners += _listeners(a, apps, names)
        except Exception as e:
            left_out(f"the upstreams of {a.id}", "they cannot be built", e)
    return tuple(listeners)


def _listeners(
    a: Allocation, apps: Mapping[str, Application], names: AbstractSet[str]
) -> list[Listener]:
    caller_app = apps.get(a.app)
    caller = caller_app.workload(a.workload) if caller_app else None
    if caller_app is None or caller is None:
        return []
    ports = dict(a.ports)
    listeners: list[Listener] = []
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
    return listeners


def wants_ack(allocations: Iterable[Allocation]) -> bool:
    """Whether agents should acknowledge a version built from ``allocations``: only while an
    instance is being stopped (its agent waits for every proxy to drop it)."""
    return any(a.desired == "stop" and not a.terminal for a in allocations)


def localize(snap: MeshSnapshot) -> MeshSnapshot:
    """Mark the endpoints on the snapshot's own node local (the server sends the shared form)."""
    if not snap.node:
        return snap
    clusters = tuple(
        replace(
            c,
            endpoints=tuple(replace(e, local=e.node == snap.node) for e in c.endpoints),
        )
        for c in snap.clusters
    )
    return replace(snap, clusters=clusters)


def build_snapshot(
    version: int,
    node_id: str,
    apps: Mapping[str, Application],
    allocations: Iterable[Allocation],
    node_addresses: Mapping[str, str],
    metrics_port: int = 0,
) -> MeshSnapshot:
    allocations = list(allocations)
    clusters = build_clusters(apps, allocations, node_addresses, node_id)
    listeners = build_listeners(node_id, apps, allocations, (c.name for c in clusters))
    return MeshSnapshot(
        version, node_id, listeners, clusters, metrics_port, ack_wanted=wants_ack(allocations)
    )
