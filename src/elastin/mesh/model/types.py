"""Types of the mesh model (see the package docstring). Frozen, validated on construction.

Names: a cluster is ``<app>.<service>.<port>`` (``names.ClusterName``, its one
textual form and parser); an endpoint id is ``<alloc id>-<port>``;
both are limited to ``[A-Za-z0-9._-]`` so that every renderer can use them as identifiers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

# Fault is defined with the spec's mesh policy and used as it is on listeners
from elastin.mesh.model.names import ClusterName
from elastin.model.spec import RETRY_CONDITIONS
from elastin.model.workload import (
    REQUEST_HEADER_BYTES_MOST,
    REQUEST_HEADERS_DEFAULT,
    REQUEST_HEADERS_MOST,
    Protocol,
)
from elastin.model.workload import Fault as Fault

LbPolicy = Literal["round_robin", "least_request", "least_conn", "hash_header", "hash_cookie"]
LB_POLICIES: tuple[LbPolicy, ...] = (
    "round_robin",
    "least_request",
    "least_conn",
    "hash_header",
    "hash_cookie",
)
NAME = re.compile(r"^[A-Za-z0-9._-]{1,120}$")
HOLD_MAX_MOST = 100_000  # requests one proxy may hold for a service scaled to zero


class MeshModelError(ValueError):
    """A mesh object that cannot be rendered (a bad name, port or policy)."""


def _name(kind: str, value: str) -> None:
    if not NAME.match(value):
        raise MeshModelError(f"{kind} name {value!r} must match [A-Za-z0-9._-]{{1,120}}")


def _port(kind: str, value: int) -> None:
    if not 1 <= value <= 65535:
        raise MeshModelError(f"{kind} port {value} is outside 1..65535")


@dataclass(frozen=True)
class Endpoint:
    id: str
    address: str
    port: int
    weight: int = 100  # 0..256, relative
    node: str = ""
    ready: bool = True
    local: bool = False  # on the same node as this proxy (preferred when healthy)

    def __post_init__(self) -> None:
        _name("endpoint", self.id)
        _port("endpoint", self.port)
        if not 0 <= self.weight <= 256:
            raise MeshModelError(f"endpoint weight {self.weight} is outside 0..256")


@dataclass(frozen=True)
class Timeouts:
    connect: float = 2.0
    request: float = 30.0  # endpoint inactivity while a request or connection is open
    idle: float = 60.0  # client / keep-alive inactivity


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 2
    on: tuple[str, ...] = ("conn-failure", "empty-response", "response-timeout")
    redispatch: bool = True  # retry on another endpoint

    def __post_init__(self) -> None:
        bad = [c for c in self.on if c not in RETRY_CONDITIONS]
        if bad:
            raise MeshModelError(
                f"unknown retry condition {bad[0]!r}; use {', '.join(RETRY_CONDITIONS)}"
            )
        if not 0 <= self.attempts <= 10:
            raise MeshModelError(f"retry attempts {self.attempts} is outside 0..10")


@dataclass(frozen=True)
class CircuitBreaker:
    max_connections: int = 0  # per endpoint; 0 = unlimited
    max_queue: int = 0  # requests waiting for a connection slot, per endpoint; 0 = unlimited
    queue_timeout: float = 1.0


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_errors: int = 5  # 5xx or connection errors in a row mark an endpoint down
    enabled: bool = True


@dataclass(frozen=True)
class Cluster:
    name: str
    protocol: Protocol = "http"
    lb: LbPolicy = "round_robin"
    hash_key: str = ""  # header or cookie name for hash_header / hash_cookie
    endpoints: tuple[Endpoint, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    outlier: OutlierDetection = field(default_factory=OutlierDetection)
    rate_limit: int = 0  # requests per second for the whole service; 0 = none
    # a JSON line per request to this service (per connection for TCP), unless off: every
    # abnormal one, and this share of the normal ones (1.0: all; 0.0: abnormal ones only)
    access_log: bool = True
    access_log_sample: float = 0.01
    slow: float = 1.0  # seconds: an HTTP endpoint slower to answer is abnormal; 0 = never
    trace_sample: float = 0.01  # share of requests without a valid traceparent traced
    # request header limits, over which a caller gets the mesh's named 431 (HTTP ports)
    max_request_headers: int = REQUEST_HEADERS_DEFAULT
    max_request_header_bytes: int = 0  # 0: what the proxy holds
    # scale to zero (the service's autoscale.min is 0; HTTP, HTTP/2 and gRPC only): a
    # caller's request that finds no endpoint up is held while a replica starts, at most
    # ``hold_timeout`` seconds and ``hold_max`` requests at once per proxy (docs/mesh.md)
    scale_to_zero: bool = False
    hold_timeout: float = 30.0
    hold_max: int = 100
    # the service autoscales on its p99 latency (an autoscale metric ``p99``; HTTP, HTTP/2
    # and gRPC only): every proxy counts its responses in a latency histogram
    # (``traffic.LATENCY_BOUNDS_MS``), which the agent reports and the server turns into a
    # p99 (docs/mesh.md, "Metrics"). Off: no per-request cost at all
    latency_histogram: bool = False

    def __post_init__(self) -> None:
        _name("cluster", self.name)
        if self.latency_histogram and self.protocol == "tcp":
            raise MeshModelError(
                f"cluster {self.name}: latency_histogram needs an HTTP or gRPC port (a TCP "
                "connection has no response time)"
            )
        if self.scale_to_zero and self.protocol == "tcp":
            raise MeshModelError(
                f"cluster {self.name}: scale_to_zero needs an HTTP or gRPC port (a TCP "
                "connection cannot be held)"
            )
        if not 0 < self.hold_timeout <= 3600:  # NaN fails too
            raise MeshModelError(
                f"cluster {self.name}: hold_timeout {self.hold_timeout}s is outside (0, 3600]"
            )
        if not 1 <= self.hold_max <= HOLD_MAX_MOST:
            raise MeshModelError(
                f"cluster {self.name}: hold_max {self.hold_max} is outside 1..{HOLD_MAX_MOST}"
            )
        for what, share in (
            ("access_log_sample", self.access_log_sample),
            ("trace_sample", self.trace_sample),
        ):
            if not 0 <= share <= 1:  # NaN fails too
                raise MeshModelError(f"cluster {self.name}: {what} {share} is outside 0..1")
        if not 1 <= self.max_request_headers <= REQUEST_HEADERS_MOST:
            raise MeshModelError(
                f"cluster {self.name}: max_request_headers {self.max_request_headers} is "
                f"outside 1..{REQUEST_HEADERS_MOST}"
            )
        if self.max_request_header_bytes and not (
            1024 <= self.max_request_header_bytes <= REQUEST_HEADER_BYTES_MOST
        ):
            raise MeshModelError(
                f"cluster {self.name}: max_request_header_bytes {self.max_request_header_bytes}"
                f" is outside 1024..{REQUEST_HEADER_BYTES_MOST} (or 0: what the proxy holds)"
            )
        if not 0 <= self.slow <= 86400:
            raise MeshModelError(f"cluster {self.name}: slow {self.slow}s is outside 0..86400")
        if self.lb in ("hash_header", "hash_cookie") and not self.hash_key:
            raise MeshModelError(f"cluster {self.name}: {self.lb} needs hash_key")
        ids = [e.id for e in self.endpoints]
        if len(ids) != len(set(ids)):
            raise MeshModelError(f"cluster {self.name}: endpoint ids repeat")

    @property
    def service_port(self) -> ClusterName:
        """The service port this cluster is (its name, parsed); ValueError for a cluster not
        named ``<app>.<service>.<port>``."""
        return ClusterName.parse(self.name)

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        for e in self.endpoints:
            if e.id == endpoint_id:
                return e
        return None

    def policy(self) -> Cluster:
        """This cluster without its endpoints: what needs a reload when it changes."""
        return replace(self, endpoints=())


@dataclass(frozen=True)
class Listener:
    name: str
    port: int
    cluster: str
    address: str = "127.0.0.1"
    protocol: Protocol = "http"
    owner: str = ""  # "app/workload" whose calls arrive here ("" for inbound listeners)
    fault: Fault | None = None

    def __post_init__(self) -> None:
        _name("listener", self.name)
        _port("listener", self.port)
        _name("cluster", self.cluster)


@dataclass(frozen=True)
class MeshSnapshot:
    version: int
    node: str = ""
    listeners: tuple[Listener, ...] = ()
    clusters: tuple[Cluster, ...] = ()
    metrics_port: int = 0  # Prometheus exporter on 127.0.0.1; 0 = none
    ack_wanted: bool = False  # the server waits to hear when this version is served (drains)

    def __post_init__(self) -> None:
        names = {c.name for c in self.clusters}
        if len(names) != len(self.clusters):
            raise MeshModelError("cluster names repeat")
        ports = [(lst.address, lst.port) for lst in self.listeners]
        if len(ports) != len(set(ports)):
            raise MeshModelError("two listeners bind the same address and port")
        for lst in self.listeners:
            if lst.cluster not in names:
                raise MeshModelError(f"listener {lst.name} names unknown cluster {lst.cluster}")

    def cluster(self, name: str) -> Cluster | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None
