"""Short rolling windows of what agents measure every second (pure; memory only, never the
store): per instance cpu, memory, their requests and readiness, and per service port the
requests per second, errors per second, in-flight requests and response times of every
node's proxy, per replica and in total.

Agents send a *metrics report* at their ``--metrics-interval`` (1 s by default; ``POST
/v1/nodes/{id}/metrics``, apart from the 5 s heartbeat, which writes the node's liveness).
``parse_report`` checks one (a ``ValueError`` saying what is wrong) into a ``NodeReport``;
``Windows.record`` turns it into one ``NodePoint`` for the server's current second:

- the proxy's request and error counters are cumulative (the agent's ``Totals`` already
  keep them monotonic across HAProxy's reloads); a rate is the difference from the node's
  previous report over the time between the two samples (the agent's clock, so network
  delays do not bend it). A counter that went down was reset (a proxy restarted without its
  base): what it counts now is what it counted since, as Prometheus' ``rate`` assumes. A
  service port or endpoint seen for the first time has no rate yet (its counter's start is
  unknown);
- in flight (current sessions plus queued), the average response time (HAProxy's ``rtime``:
  the last 1,024 requests) and the longest response of the interval (``rtime_max``, which
  the agent clears after each reading) are gauges; both times are left out (None) for an
  interval without a request;
- two reports in one second merge (rates over their summed time, gauges from the newer).

Each node keeps a ring of ``seconds`` points (300: five minutes at 1 s). A point stands for
its second and, while no newer one came, for ``hold`` seconds after it (at least 2 s, more
for a node that reports less often), so that a report landing a little late does not show as
a hole. A node that stops reporting ages out: after ``hold`` it counts in no current value,
after the window it is gone; ``forget`` drops a node at once (marked down).

``Windows.service`` aggregates one service over every node: the current value and the last N
seconds of each metric, per replica (an allocation) and in total, per port and over its
ports. Nothing here does I/O; time comes from the injected ``Clock``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from elastin.clock import SYSTEM, Clock
from elastin.mesh.model.names import ClusterName

WINDOW_SECONDS = 300  # five minutes at one second
MIN_HOLD = 2  # seconds a point stands for at least (a report arriving late is no hole)
MAX_REPORT_BYTES = 1 << 20  # a larger report is refused (413)
MAX_ENTRIES = 20_000  # instances, ports or endpoints in one report at most


# --- the report an agent sends ------------------------------------------------------------


@dataclass(frozen=True)
class InstanceReading:
    """One instance (allocation) on the reporting node. cpu in millicores (used since the
    previous sample, from the cgroup's usage), memory in bytes; the requests are the
    allocation's."""

    app: str
    workload: str
    cpu: float
    memory: int
    cpu_request: int = 0
    memory_request: int = 0
    ready: bool = False


@dataclass(frozen=True)
class EndpointReading:
    """One replica of a service port as the reporting node's proxy sees it."""

    requests: int  # cumulative
    active: int = 0
    avg_ms: float = 0.0
    max_ms: float = 0.0


@dataclass(frozen=True)
class PortReading:
    """One service port (mesh cluster) as the reporting node's proxy counted it."""

    name: ClusterName
    mode: str
    requests: int  # cumulative (HTTP requests; TCP connections)
    errors: int  # cumulative (5xx and broken responses)
    active: int = 0
    queued: int = 0
    avg_ms: float = 0.0  # the last 1,024 requests
    max_ms: float = 0.0  # the longest since the previous reading
    endpoints: Mapping[str, EndpointReading] = field(default_factory=dict)  # allocation ->


@dataclass(frozen=True)
class NodeReport:
    at: float  # the agent's wall clock when it sampled
    interval: float
    instances: Mapping[str, InstanceReading]
    ports: Mapping[str, PortReading]


def _num(data: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{where}.{key} must be a number >= 0, not {v!r}")
    return float(v)


def _int(data: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    return int(_num(data, key, where, default))


def _obj(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object, not {type(data).__name__}")
    if len(data) > MAX_ENTRIES:
        raise ValueError(f"{where} has {len(data)} entries; at most {MAX_ENTRIES}")
    return data


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    v = data.get(key)
    if not isinstance(v, str) or not v or len(v) > 256:
        raise ValueError(f"{where}.{key} must be a non-empty string")
    return v


def parse_report(data: Any) -> NodeReport:
    """An agent's metrics report (decoded JSON) → ``NodeReport``; ``ValueError`` naming the
    field when it is malformed."""
    top = _obj(data, "the report")
    instances: dict[str, InstanceReading] = {}
    for alloc_id, raw in _obj(top.get("instances", {}), "instances").items():
        w = f"instances[{alloc_id!r}]"
        i = _obj(raw, w)
        ready = i.get("ready", False)
        if not isinstance(ready, bool):
            raise ValueError(f"{w}.ready must be true or false")
        instances[alloc_id] = InstanceReading(
            app=_str(i, "app", w),
            workload=_str(i, "workload", w),
            cpu=_num(i, "cpu", w),
            memory=_int(i, "memory", w),
            cpu_request=_int(i, "cpu_request", w, 0),
            memory_request=_int(i, "memory_request", w, 0),
            ready=ready,
        )
    ports: dict[str, PortReading] = {}
    for name, raw in _obj(top.get("ports", {}), "ports").items():
        w = f"ports[{name!r}]"
        p = _obj(raw, w)
        try:
            cluster = ClusterName.parse(name)
        except ValueError:
            raise ValueError(f"{w}: not a service port <app>.<service>.<port>") from None
        endpoints = {
            alloc_id: EndpointReading(
                requests=_int(e, "requests", f"{w}.endpoints[{alloc_id!r}]"),
                active=_int(e, "active", f"{w}.endpoints[{alloc_id!r}]", 0),
                avg_ms=_num(e, "avg_ms", f"{w}.endpoints[{alloc_id!r}]", 0),
                max_ms=_num(e, "max_ms", f"{w}.endpoints[{alloc_id!r}]", 0),
            )
            for alloc_id, e in (
                (k, _obj(v, f"{w}.endpoints[{k!r}]"))
                for k, v in _obj(p.get("endpoints", {}), f"{w}.endpoints").items()
            )
        }
        mode = p.get("mode", "http")
        if mode not in ("http", "tcp"):
            raise ValueError(f"{w}.mode must be http or tcp, not {mode!r}")
        ports[name] = PortReading(
            name=cluster,
            mode=mode,
            requests=_int(p, "requests", w),
            errors=_int(p, "errors", w, 0),
            active=_int(p, "active", w, 0),
            queued=_int(p, "queued", w, 0),
            avg_ms=_num(p, "avg_ms", w, 0),
            max_ms=_num(p, "max_ms", w, 0),
            endpoints=endpoints,
        )
    interval = _num(top, "interval", "the report", 1.0)
    if not 0 < interval <= 3600:
        raise ValueError(f"the report's interval must be in (0, 3600] seconds, not {interval}")
    return NodeReport(
        at=_num(top, "at", "the report"),
        interval=interval,
        instances=instances,
        ports=ports,
    )


# --- what one node measured in one second -------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """Requests over ``seconds`` (None: no rate yet), and the gauges at the end of it."""

    requests: float | None  # requests in the interval
    errors: float | None
    seconds: float
    in_flight: int
    avg_ms: float | None  # None: no request in the interval
    max_ms: float | None

    @property
    def rate(self) -> float | None:
        if self.requests is None or self.seconds <= 0:
            return None
        return self.requests / self.seconds

    @property
    def error_rate(self) -> float | None:
        if self.errors is None or self.seconds <= 0:
            return None
        return self.errors / self.seconds

    def merged(self, newer: Traffic) -> Traffic:
        """This interval and the ``newer`` one after it (two reports in one second); one
        without a rate (the first reading) adds nothing to the other's."""
        if self.requests is None:
            rated = newer
        elif newer.requests is None:
            rated = self
        else:
            rated = replace(
                newer,
                requests=self.requests + newer.requests,
                errors=_add(self.errors, newer.errors),
                seconds=self.seconds + newer.seconds,
            )
        return Traffic(
            requests=rated.requests,
            errors=rated.errors,
            seconds=rated.seconds,
            in_flight=newer.in_flight,
            avg_ms=newer.avg_ms if newer.avg_ms is not None else self.avg_ms,
            max_ms=_max([self.max_ms, newer.max_ms]),
        )


@dataclass(frozen=True)
class PortPoint:
    name: ClusterName
    total: Traffic
    endpoints: Mapping[str, Traffic]  # allocation -> its share


@dataclass
class NodePoint:
    second: int
    instances: dict[str, InstanceReading]
    ports: dict[str, PortPoint]


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _max(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _delta(now: int, before: int | None) -> float | None:
    """What a cumulative counter counted since ``before`` (None: unknown); one that went down
    was reset and counted ``now`` since."""
    if before is None:
        return None
    return float(now - before) if now >= before else float(now)


def _traffic(
    requests: int,
    errors: int,
    in_flight: int,
    avg_ms: float,
    max_ms: float,
    before: tuple[int, int] | None,
    seconds: float,
) -> Traffic:
    req = _delta(requests, before[0] if before else None)
    err = _delta(errors, before[1] if before else None)
    quiet = req is not None and req == 0
    return Traffic(
        requests=req,
        errors=err,
        seconds=seconds if before is not None else 0.0,
        in_flight=in_flight,
        avg_ms=None if quiet else avg_ms,
        max_ms=None if quiet else max_ms,
    )


@dataclass
class _Node:
    ring: list[NodePoint | None]
    at: float  # the agent's time of the last report
    seen: float  # the server's monotonic time of the last report
    hold: int
    # the last cumulative counters: cluster -> (requests, errors), endpoint (cluster, alloc)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)
    endpoint_counters: dict[tuple[str, str], int] = field(default_factory=dict)


# --- the windows ---------------------------------------------------------------------------


class Windows:
    """Every node's last ``seconds`` of metrics at 1 s resolution (see the module's doc)."""

    def __init__(self, clock: Clock = SYSTEM, seconds: int = WINDOW_SECONDS) -> None:
        self.clock = clock
        self.seconds = seconds
        self._nodes: dict[str, _Node] = {}

    def nodes(self) -> list[str]:
        self._prune()
        return sorted(self._nodes)

    def forget(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def record(self, node_id: str, report: NodeReport) -> None:
        """One report of ``node_id`` (a report older than its last one is ignored)."""
        now = self.clock.time()
        second = int(now)
        hold = max(MIN_HOLD, math.ceil(report.interval) + 1)
        node = self._nodes.get(node_id)
        if node is not None and report.at <= node.at:
            return  # a late or repeated report: the newer one counted already
        if node is None:
            node = _Node([None] * self.seconds, report.at, self.clock.monotonic(), hold)
            self._nodes[node_id] = node
        seconds = report.at - node.at
        ports: dict[str, PortPoint] = {}
        counters: dict[str, tuple[int, int]] = {}
        endpoint_counters: dict[tuple[str, str], int] = {}
        for key, p in report.ports.items():
            before = node.counters.get(key)
            counters[key] = (p.requests, p.errors)
            total = _traffic(
                p.requests, p.errors, p.active + p.queued, p.avg_ms, p.max_ms, before, seconds
            )
            eps: dict[str, Traffic] = {}
            for alloc_id, e in p.endpoints.items():
                endpoint_counters[(key, alloc_id)] = e.requests
                prev = node.endpoint_counters.get((key, alloc_id))
                eps[alloc_id] = _traffic(
                    e.requests,
                    0,
                    e.active,
                    e.avg_ms,
                    e.max_ms,
                    None if prev is None else (prev, 0),
                    seconds,
                )
            ports[key] = PortPoint(p.name, total, eps)
        node.at, node.seen, node.hold = report.at, self.clock.monotonic(), hold
        node.counters, node.endpoint_counters = counters, endpoint_counters
        slot = second % self.seconds
        old = node.ring[slot]
        if old is not None and old.second == second:  # a second report in this second
            for key, pp in ports.items():
                if (was := old.ports.get(key)) is not None:
                    eps = {
                        a: was.endpoints[a].merged(t) if a in was.endpoints else t
                        for a, t in pp.endpoints.items()
                    }
                    ports[key] = PortPoint(pp.name, was.total.merged(pp.total), eps)
        node.ring[slot] = NodePoint(second, dict(report.instances), ports)
        self._prune()

    def _prune(self) -> None:
        """Nodes silent for longer than the window are gone."""
        now = self.clock.monotonic()
        for node_id in [n for n, x in self._nodes.items() if now - x.seen > self.seconds]:
            del self._nodes[node_id]

    def _point(self, node: _Node, second: int) -> NodePoint | None:
        """The node's point that stands for ``second``: its own, else the newest within the
        node's hold before it."""
        for s in range(second, second - node.hold, -1):
            p = node.ring[s % self.seconds]
            if p is not None and p.second == s:
                return p
        return None

    def service(self, app: str, service: str, last: int = 60) -> dict[str, Any]:
        """One service over every node: per metric its current value and the last ``last``
        seconds (one value a second, oldest first; None where nothing was measured), in
        total, per port and per replica. See docs/api.md for the shape."""
        self._prune()
        last = max(1, min(int(last), self.seconds))
        now = int(self.clock.time())
        times = list(range(now - last + 1, now + 1))
        frames = [self._frame(app, service, t) for t in times]
        return {
            "app": app,
            "service": service,
            "at": now,
            "times": times,
            **_series(frames),
        }

    def _frame(self, app: str, service: str, second: int) -> dict[str, Any]:
        """The service's values in one second, aggregated over the nodes."""
        instances: dict[str, tuple[str, InstanceReading]] = {}  # alloc -> (node, reading)
        ports: dict[str, list[PortPoint]] = {}
        for node_id, node in self._nodes.items():
            p = self._point(node, second)
            if p is None:
                continue
            for alloc_id, i in p.instances.items():
                if i.app == app and i.workload == service:
                    instances[alloc_id] = (node_id, i)
            for pp in p.ports.values():
                if pp.name.app == app and pp.name.service == service:
                    ports.setdefault(pp.name.port, []).append(pp)
        replicas: dict[str, dict[str, Any]] = {}
        for alloc_id, (node_id, i) in instances.items():
            replicas[alloc_id] = {
                "node": node_id,
                "ready": i.ready,
                **_usage([i]),
            }
        port_out: dict[str, Any] = {}
        per_replica_traffic: dict[str, list[Traffic]] = {}
        for port, points in sorted(ports.items()):
            by_replica: dict[str, list[Traffic]] = {}
            for pp in points:
                for alloc_id, t in pp.endpoints.items():
                    by_replica.setdefault(alloc_id, []).append(t)
                    per_replica_traffic.setdefault(alloc_id, []).append(t)
            port_out[port] = {
                **_traffic_sum([pp.total for pp in points]),
                "replicas": {a: _traffic_sum(ts) for a, ts in sorted(by_replica.items())},
            }
        for alloc_id, ts in per_replica_traffic.items():
            if alloc_id in replicas:
                replicas[alloc_id].update(_traffic_sum(ts))
        all_traffic = [pp.total for points in ports.values() for pp in points]
        total = {
            **_usage([i for _, i in instances.values()]),
            "replicas": len(instances),
            "ready": sum(1 for _, i in instances.values() if i.ready),
            **_traffic_sum(all_traffic),
        }
        return {"total": total, "ports": port_out, "replicas": replicas}


USAGE_METRICS = (
    "cpu",
    "memory",
    "cpu_request",
    "memory_request",
    "cpu_utilization",
    "memory_utilization",
)
TRAFFIC_METRICS = (
    "requests_per_s",
    "errors_per_s",
    "in_flight",
    "avg_response_ms",
    "max_response_ms",
    "p99_response_ms",
)


def _usage(readings: list[InstanceReading]) -> dict[str, float | None]:
    if not readings:
        return dict.fromkeys(USAGE_METRICS)
    cpu = sum(i.cpu for i in readings)
    mem = sum(i.memory for i in readings)
    cpu_req = sum(i.cpu_request for i in readings)
    mem_req = sum(i.memory_request for i in readings)
    return {
        "cpu": cpu,
        "memory": float(mem),
        "cpu_request": float(cpu_req),
        "memory_request": float(mem_req),
        "cpu_utilization": cpu / cpu_req if cpu_req else None,
        "memory_utilization": mem / mem_req if mem_req else None,
    }


def _traffic_sum(ts: list[Traffic]) -> dict[str, float | None]:
    """Traffic seen by several proxies: rates and in flight add up, the average is weighted
    by the requests each saw, the longest is the longest. No p99: see docs/mesh.md."""
    if not ts:
        return dict.fromkeys(TRAFFIC_METRICS)
    rates = [t.rate for t in ts]
    known = [r for r in rates if r is not None]
    weighted = [(t.avg_ms, r) for t, r in zip(ts, rates, strict=True) if t.avg_ms is not None]
    weight = sum(r or 0.0 for _, r in weighted)
    if weighted and weight > 0:
        avg: float | None = sum(a * (r or 0.0) for a, r in weighted) / weight
    else:
        avg = _max(a for a, _ in weighted)
    errs = [e for t in ts if (e := t.error_rate) is not None]
    return {
        "requests_per_s": sum(known) if known else None,
        "errors_per_s": sum(errs) if errs else None,
        "in_flight": float(sum(t.in_flight for t in ts)),
        "avg_response_ms": avg,
        "max_response_ms": _max(t.max_ms for t in ts),
        "p99_response_ms": None,
    }


def _series(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """Frames (one per second, oldest first) → per metric ``{"current", "series"}``; the
    current value is the last frame's. Replicas and ports are those of any frame."""

    def metric(values: list[Any]) -> dict[str, Any]:
        return {"current": values[-1], "series": values}

    def table(rows: list[dict[str, Any] | None]) -> dict[str, Any]:
        keys = [k for r in rows if r for k in r]
        out: dict[str, Any] = {}
        for k in dict.fromkeys(keys):
            values = [r.get(k) if r else None for r in rows]
            if k == "node":
                out[k] = next((v for v in reversed(values) if v is not None), None)
            elif k == "replicas" and any(isinstance(v, dict) for v in values):
                out[k] = nested([v if isinstance(v, dict) else None for v in values])
            else:
                out[k] = metric(values)
        return out

    def nested(rows: list[dict[str, Any] | None]) -> dict[str, Any]:
        names = sorted({n for r in rows if r for n in r})
        return {n: table([r.get(n) if r else None for r in rows]) for n in names}

    return {
        "total": table([f["total"] for f in frames]),
        "ports": nested([f["ports"] for f in frames]),
        "replicas": nested([f["replicas"] for f in frames]),
    }
