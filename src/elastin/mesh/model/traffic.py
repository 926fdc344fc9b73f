"""The mesh's traffic per service port, as one node's proxy counted it (pure data).

``ClusterStats`` holds the counters an operator asks about first for one mesh cluster
(a service port, named by its ``app``, ``service`` and ``port``): requests, responses by
class, connection and response errors, retries, what is in flight, the recent average
response time, and each endpoint's state (``EndpointStats``). Nothing here knows which proxy
counted: ``mesh.haproxy.stats`` reads HAProxy's ``show stat`` into these types on the agent,
which exports them on its ``/metrics`` and sends them with its heartbeat; the server keeps
each node's (``elastin traffic``, ``/v1/metrics``). The JSON form (``model.codec``) is the
heartbeat's ``mesh`` field; the agent's one-second metrics report carries the same numbers
in its own, smaller form (``server/windows.py``).

``TRAFFIC_METRICS`` is the one list of what is exported about them (``elastin_mesh_*``: name,
help, type, value); the agent and the server turn it into Prometheus metric families, each
sample labelled app, service and port (plus, on the server, the node).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from elastin.mesh.model.names import ClusterName
from elastin.metrics import MetricKind

# ports an agent's early metrics report names as jumped at most (the agent cuts its list
# there, the server refuses more)
MAX_JUMPED = 1000

# the upper bounds (milliseconds, inclusive) of the latency histogram a proxy keeps for a
# service that autoscales on its p99 (``Cluster.latency_histogram``): log-spaced, about x1.6
# to x2.5 apart, from 5 ms to 30 s, plus one bucket for every slower response. 250 ms (a
# common target) is a bound
LATENCY_BOUNDS_MS: tuple[int, ...] = (
    5, 10, 15, 25, 40, 60, 100, 150, 250, 400, 600,
    1000, 1500, 2500, 4000, 6000, 10000, 15000, 30000,
)  # fmt: skip


@dataclass(frozen=True)
class EndpointStats:
    id: str  # the mesh endpoint id (<allocation>-<port>)
    status: str  # UP, DOWN, MAINT, DRAIN, "no check", ...
    active: int  # requests/connections in flight
    served: int  # requests or connections sent to it in total
    check: str = ""  # the last health check's status (L4OK, L7STS, ...)
    avg_response_ms: int = 0  # over its last 1,024 requests
    max_response_ms: int = 0  # the longest since the proxy's max values were last cleared

    @property
    def up(self) -> bool:
        return self.status.startswith("UP")


@dataclass(frozen=True)
class ClusterStats:
    app: str
    service: str
    port: str  # the port's name
    mode: str  # http or tcp
    requests: int  # HTTP requests, or TCP connections, that arrived (answered or not yet)
    responses_2xx: int = 0
    responses_3xx: int = 0
    responses_4xx: int = 0
    responses_5xx: int = 0
    connect_errors: int = 0
    response_errors: int = 0
    retries: int = 0
    redispatches: int = 0
    active: int = 0
    queued: int = 0
    avg_response_ms: int = 0  # over the last 1,024 requests
    # the longest response since the proxy's max values were last cleared (the agent's
    # metrics loop clears them after each reading: the longest of its interval)
    max_response_ms: int = 0
    endpoints: tuple[EndpointStats, ...] = ()
    # responses per latency bucket, cumulative over time (not over buckets): bucket i
    # counts those that took at most ``LATENCY_BOUNDS_MS[i]`` ms and more than the bound
    # before it, the last one those slower than every bound; empty when the proxy keeps no
    # histogram for the service (``Cluster.latency_histogram``)
    latency: tuple[int, ...] = ()

    @property
    def name(self) -> ClusterName:
        """The service port (``str(stats.name)`` is the mesh cluster's name)."""
        return ClusterName(self.app, self.service, self.port)

    @property
    def errors(self) -> int:
        """Failed requests as a caller sees them: 5xx answers and broken connections."""
        return self.responses_5xx + self.response_errors

    @property
    def endpoints_up(self) -> int:
        return sum(1 for e in self.endpoints if e.up)

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.app, "service": self.service, "port": self.port}


@dataclass(frozen=True)
class TrafficMetric:
    name: str  # the exported name (counters end in _total)
    help: str
    kind: MetricKind
    value: Callable[[ClusterStats], float]


TRAFFIC_METRICS: tuple[TrafficMetric, ...] = (
    TrafficMetric(
        "elastin_mesh_requests_total",
        "Requests (TCP: connections) that reached the service's mesh backend, answered or not.",
        "counter",
        lambda s: s.requests,
    ),
    TrafficMetric(
        "elastin_mesh_errors_total",
        "5xx answers and broken responses from the service.",
        "counter",
        lambda s: s.errors,
    ),
    TrafficMetric(
        "elastin_mesh_connect_errors_total",
        "Failed connections to the service's endpoints.",
        "counter",
        lambda s: s.connect_errors,
    ),
    TrafficMetric(
        "elastin_mesh_retries_total", "Requests the mesh retried.", "counter", lambda s: s.retries
    ),
    TrafficMetric(
        "elastin_mesh_in_flight", "Requests in flight to the service.", "gauge", lambda s: s.active
    ),
    TrafficMetric(
        "elastin_mesh_response_ms",
        "Average response time over the last 1,024 requests.",
        "gauge",
        lambda s: s.avg_response_ms,
    ),
    TrafficMetric(
        "elastin_mesh_endpoints_up",
        "Endpoints of the service the proxy considers up.",
        "gauge",
        lambda s: s.endpoints_up,
    ),
)

Sample = tuple[dict[str, str], float]


def traffic_samples(
    groups: Iterable[tuple[Mapping[str, ClusterStats], Mapping[str, str]]],
) -> list[tuple[TrafficMetric, list[Sample]]]:
    """Every ``TRAFFIC_METRICS`` entry with its samples for groups of ``(stats per cluster,
    extra labels)`` (e.g. one group per node): each sample labelled app, service and port
    plus the group's labels, clusters in name order within a group."""
    groups = list(groups)
    out: list[tuple[TrafficMetric, list[Sample]]] = []
    for metric in TRAFFIC_METRICS:
        samples: list[Sample] = []
        for stats, extra in groups:
            for cluster in sorted(stats):
                s = stats[cluster]
                samples.append(({**s.labels, **extra}, float(metric.value(s))))
        out.append((metric, samples))
    return out
