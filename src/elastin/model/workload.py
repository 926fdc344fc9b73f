"""The desired state: an ``Application`` of ``Workload``s, as a spec file describes it.

An application has services (long-running, ``type="service"``) and jobs (run to completion,
``type="job"``). Every workload has a ``kind`` naming the driver that runs it: ``task`` (a
process), ``container`` (an OCI image run by runc) or ``vm`` (QEMU). Values here are already
validated and normalised (cpu in millicores, sizes in bytes, durations in seconds); the parser
in ``spec.py`` builds them from YAML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from elastin.model.resources import Resources

WorkloadType = Literal["service", "job"]
Kind = Literal["task", "container", "vm"]
KINDS: tuple[Kind, ...] = ("task", "container", "vm")
RestartMode = Literal["always", "on-failure", "never"]
CheckType = Literal["http", "tcp", "grpc", "exec"]
Protocol = Literal["http", "http2", "grpc", "tcp"]


@dataclass(frozen=True)
class RestartPolicy:
    """When a finished or failed instance is started again, and how long to wait first.

    The delay before restart n (1-based) is ``min(backoff * 2**(n-1), max_backoff)``.
    ``attempts`` bounds consecutive restarts (0 = unlimited); a run that stayed up for
    ``reset_after`` seconds resets the count.
    """

    mode: RestartMode = "on-failure"
    attempts: int = 0
    backoff: float = 1.0
    max_backoff: float = 60.0
    reset_after: float = 60.0

    def delay(self, restart_number: int) -> float:
        n = max(1, restart_number)
        return float(min(self.backoff * (2 ** (n - 1)), self.max_backoff))


@dataclass(frozen=True)
class HealthCheck:
    """How the agent decides an instance is healthy (ready for traffic)."""

    type: CheckType
    port: str = ""  # named port (http, tcp, grpc)
    path: str = "/"  # http
    service: str = ""  # grpc: the service name asked of grpc.health.v1 ("" = the server)
    command: tuple[str, ...] = ()  # exec
    interval: float = 10.0
    timeout: float = 2.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 3
    grace: float = 0.0  # seconds after start before failures count


@dataclass(frozen=True)
class Port:
    """A named port. ``port=0`` means the agent picks a free one and passes it in the env
    as ``ELASTIN_PORT_<NAME>`` (and ``PORT`` for the first port)."""

    name: str
    port: int = 0
    protocol: Protocol = "http"


@dataclass(frozen=True)
class Constraint:
    """A node constraint: ``attribute`` compared to ``value`` with ``op``."""

    attribute: str
    op: Literal["==", "!=", "in", "not_in"] = "=="
    value: str | tuple[str, ...] = ""


# Request header limits the mesh holds a service's callers to, answering a request over them
# with a 431 that names the service and the limit (Envoy's defaults are 100 headers and
# 60 KiB of them). A service may ask for up to 200 headers and 14 KiB, below what the node's
# proxy parses (256 headers, a request head of about 15 KiB: its 16 KiB buffer less the room
# kept for rewrites), beyond which its parser refuses a request before any rule can name it
# (docs/mesh.md, "Limits and errors").
REQUEST_HEADERS_DEFAULT = 100
REQUEST_HEADERS_MOST = 200
REQUEST_HEADER_BYTES_MOST = 14 * 1024

LbPolicy = Literal["round_robin", "least_request", "least_conn", "hash_header", "hash_cookie"]


@dataclass(frozen=True)
class Fault:
    """Fault injection for testing: abort or delay a share of the requests to a service
    (every caller's listener for it). Percentages are 0..100."""

    abort_status: int = 0
    abort_percent: float = 0.0
    delay: float = 0.0  # seconds
    delay_percent: float = 0.0


@dataclass(frozen=True)
class MeshPolicy:
    """How the mesh treats calls *to* this service (the proxy's cluster for its ports)."""

    lb: LbPolicy = "round_robin"
    hash_key: str = ""  # header or cookie name for hash_header / hash_cookie
    connect_timeout: float = 2.0
    request_timeout: float = 30.0
    idle_timeout: float = 60.0
    retries: int = 2
    retry_on: tuple[str, ...] = ("conn-failure", "empty-response", "response-timeout")
    max_connections: int = 0  # per endpoint; 0 = unlimited
    max_queue: int = 0  # per endpoint; 0 = unlimited
    consecutive_errors: int = 5  # outlier detection; 0 = off
    rate_limit: int = 0  # requests per second for the service; 0 = none
    fault: Fault | None = None
    # the access log (docs/mesh.md): off when False; else every abnormal request (5xx,
    # connection failures, retries, timeouts, aborts, 429, slower than ``slow``) and this
    # share of the normal ones (1.0 = every request, 0.0 = abnormal ones only)
    access_log: bool = True
    access_log_sample: float = 0.01
    slow: float = 1.0  # seconds; an endpoint slower to answer is logged (0 = no such rule)
    # the share of requests without a valid W3C traceparent that start a trace
    trace_sample: float = 0.01
    # a request with more headers, or more bytes of them, gets the mesh's named 431
    max_request_headers: int = REQUEST_HEADERS_DEFAULT
    max_request_header_bytes: int = 0  # 0: what the node's proxy holds (about 15 KiB)


@dataclass(frozen=True)
class UpdatePolicy:
    """How a service's instances are replaced when its spec changes (a *rollout*; Nomad's
    ``update`` block, a Kubernetes Deployment's rolling update).

    At most ``replicas + max_surge`` instances run at once and at least ``replicas -
    max_unavailable`` stay available; a new instance counts once it has been ready (running,
    and healthy when it has a check) for ``min_healthy_time``. A version whose instances are
    not all ready within ``healthy_deadline`` of the rollout's start (or that fail) is rolled
    back to the last version that was (``auto_revert``). ``canary`` > 0 starts that many new
    instances beside the old ones and waits for ``elastin rollout promote``. A service with a
    fixed port is replaced stop-first (surge 0, one unavailable at a time): two instances
    cannot hold one port.
    """

    max_surge: int = 1
    max_unavailable: int = 0
    min_healthy_time: float = 5.0
    healthy_deadline: float = 300.0
    auto_revert: bool = True
    canary: int = 0


MetricKind = Literal["cpu", "memory", "rps", "inflight", "p99", "app"]
METRIC_KINDS: tuple[MetricKind, ...] = ("cpu", "memory", "rps", "inflight", "p99", "app")
PolicyType = Literal["pods", "percent"]
SelectPolicy = Literal["max", "min", "disabled"]
VerticalMode = Literal["off", "recommend", "auto"]


# an application metric's name (Prometheus' rule, at most 200 characters): checked where a
# spec names it and where an agent's report carries its value
PROMETHEUS_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,199}")
MAX_APP_GAUGES = 64  # application gauges one instance reports at most (agent and server)


@dataclass(frozen=True)
class MetricTarget:
    """One metric a service's replica count follows (Kubernetes HPA v2's ``metrics`` entry).

    ``target`` by kind: ``cpu`` and ``memory``: the utilisation of the request as a fraction
    (``70%`` is 0.7); ``rps``: requests per second per replica; ``inflight``: requests in
    flight per replica; ``p99``: the service's p99 latency in seconds; ``app``: the average
    per replica of the gauge ``name`` read from the service's own Prometheus endpoint
    (``port``, ``path``)."""

    kind: MetricKind
    target: float
    name: str = ""  # app: the gauge's name
    port: str = ""  # app: the named port serving it
    path: str = "/metrics"  # app

    @property
    def label(self) -> str:
        """How a decision names it: ``cpu``, ``rps``, ``queue_depth``."""
        return self.name if self.kind == "app" else self.kind


@dataclass(frozen=True)
class ScalingPolicy:
    """At most ``value`` replicas (``pods``) or ``value`` percent of the replicas at the start
    of the last ``period`` seconds (``percent``) added or removed within that period."""

    type: PolicyType
    value: int
    period: float


@dataclass(frozen=True)
class ScalingRules:
    """One direction of ``behavior`` (HPA's ``HPAScalingRules``): the highest (scale-down) or
    lowest (scale-up) recommendation of the last ``stabilization_window`` seconds is used, and
    the change is bounded by the ``policies``, of which ``select`` picks the one allowing the
    most change (``max``), the least (``min``), or none at all (``disabled``)."""

    stabilization_window: float = 0.0
    select: SelectPolicy = "max"
    policies: tuple[ScalingPolicy, ...] = ()


# HPA's defaults, but for the scale-down window: 60 s (Knative's stable window) instead of
# HPA's 300 s, since Elastin evaluates every second rather than every 15 (docs/autoscaling.md).
SCALE_UP_DEFAULT = ScalingRules(
    0.0, "max", (ScalingPolicy("pods", 4, 15.0), ScalingPolicy("percent", 100, 15.0))
)
SCALE_DOWN_DEFAULT = ScalingRules(60.0, "max", (ScalingPolicy("percent", 100, 15.0),))


@dataclass(frozen=True)
class Behavior:
    """How fast replicas may be added and removed (HPA v2's ``behavior``)."""

    scale_up: ScalingRules = SCALE_UP_DEFAULT
    scale_down: ScalingRules = SCALE_DOWN_DEFAULT


@dataclass(frozen=True)
class Vertical:
    """The vertical recommender of a service (as Kubernetes' VPA): ``off``, ``recommend``
    (computed and shown) or ``auto`` (applied in place). The target is the ``percentile`` of
    a decaying histogram of usage (cpu samples; memory peaks) plus ``margin``, within the
    bounds (0 = no bound); ``half_life``: how fast old samples lose weight."""

    mode: VerticalMode = "off"
    percentile: float = 0.9
    margin: float = 0.15
    half_life: float = 86400.0
    min_cpu: int = 0  # millicores
    max_cpu: int = 0
    min_memory: int = 0  # bytes
    max_memory: int = 0


@dataclass(frozen=True)
class Autoscale:
    """A service's ``autoscale:`` block: horizontal (replicas between ``min`` and ``max``
    following ``metrics``, HPA's semantics) and vertical (``vertical``). ``metrics`` empty:
    no horizontal scaling (only ``vertical:`` was given). ``min == 0`` scales to zero after
    ``idle_after`` seconds without a request. The autoscaler (``elastin.autoscale``) reads
    this; docs/autoscaling.md says what it means."""

    min: int = 1
    max: int = 1
    metrics: tuple[MetricTarget, ...] = ()
    behavior: Behavior = field(default_factory=Behavior)
    tolerance: float = 0.1
    interval: float = 1.0
    startup_grace: float = 30.0  # a replica started this recently is left out of cpu
    idle_after: float = 300.0  # min 0: seconds without a request before the last replica goes
    vertical: Vertical | None = None

    @property
    def horizontal(self) -> bool:
        """Whether the replica count follows metrics (else only vertical scaling)."""
        return bool(self.metrics)


DYNAMIC_UIDS = range(0x70000000, 0x70000000 + 65536)
"""The uids of dynamic users (one per instance without ``user:``; docs/spec.md): above
systemd's container range, below 2**31. A spec may not name one of them."""


@dataclass(frozen=True)
class Workload:
    """One service or job of an application, as validated from the spec."""

    name: str
    type: WorkloadType = "service"
    kind: Kind = "task"
    command: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    image: str = ""  # container / vm image (not used by tasks)
    resources: Resources = field(default_factory=lambda: Resources(100, 64 * 1024 * 1024, 0))
    replicas: int = 1  # services
    priority: int = 50
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    health: HealthCheck | None = None
    ports: tuple[Port, ...] = ()
    depends_on: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ()  # services this workload calls through the mesh
    mesh: MeshPolicy = field(default_factory=MeshPolicy)
    constraints: tuple[Constraint, ...] = ()
    pids: int = 0  # pids limit, 0 = default (see agent)
    stop_grace: float = 10.0  # seconds between SIGTERM and SIGKILL
    user: str = ""  # "" = a dynamic user of its own; "root"; a user name; "uid" or "uid:gid"
    update: UpdatePolicy = field(default_factory=UpdatePolicy)  # services
    # jobs
    parallelism: int = 1
    completions: int = 1
    retries: int = 3
    retry_delay: float = 1.0  # before retry n: min(retry_delay * 2**(n-1), restart.max_backoff)
    # services: replicas and requests adjusted by the autoscaler (docs/autoscaling.md)
    autoscale: Autoscale | None = None

    def retry_wait(self, attempt: int) -> float:
        """Seconds a job waits before its ``attempt``-th retry (0: the first run, no wait)."""
        if attempt <= 0:
            return 0.0
        return float(min(self.retry_delay * (2 ** (attempt - 1)), self.restart.max_backoff))

    @property
    def instances(self) -> int:
        """The instance count of the accounting formulas: replicas, or a job's parallelism."""
        return self.replicas if self.type == "service" else self.parallelism

    def total(self) -> Resources:
        """This workload's share of R_total / C_total / A_total: request × instances."""
        return self.resources * self.instances

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True)
class Application:
    """A named set of workloads applied together from one spec file."""

    name: str
    workloads: tuple[Workload, ...] = ()

    def workload(self, name: str) -> Workload | None:
        for w in self.workloads:
            if w.name == name:
                return w
        return None
