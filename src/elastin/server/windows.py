"""Short rolling windows of what agents measure every second (pure; memory only, never the
store): per instance cpu, memory, their requests, readiness and application gauges (an
autoscaled service's own Prometheus gauges, read by the agent), and per service port the
requests per second, errors per second, in-flight requests and response times of every
node's proxy, per replica and in total.

Agents send a *metrics report* at their ``--metrics-interval`` (1 s by default; ``POST
/v1/nodes/{id}/metrics``, apart from the 5 s heartbeat, which writes the node's liveness).
``parse_report`` checks one (a ``ValueError`` saying what is wrong) into a ``NodeReport``;
``Windows.record`` takes it for the server's current second:

- the proxy's request and error counters are cumulative (the agent's ``Totals`` already
  keep them monotonic across HAProxy's reloads); a rate is the difference from the node's
  previous report over the time between the two samples on the agent's *monotonic* clock
  (``mono``; network delays do not bend it, and neither does a step of its wall clock). A
  counter that went down was reset (a proxy restarted without its base): what it counts now
  is what it counted since, as Prometheus' ``rate`` assumes. A service port or endpoint seen
  for the first time has no rate yet (its counter's start is unknown);
- a report of another agent process (``series``), or one whose time does not move forward
  (an older agent without ``mono``: its wall clock stepped back), starts a new series: its
  counters are the new baseline and give no rate yet. A report whose wall clock ``at`` is
  more than ``MAX_CLOCK_SKEW`` from the server's is refused (``ClockSkew``);
- in flight (the backend's current sessions, its queued requests included), the average
  response time (HAProxy's ``rtime``: the last 1,024 requests) and the longest response of
  the interval (``rtime_max``, which the agent clears after each reading) are gauges; both
  times are left out (None) for an interval without a request;
- two reports in one second merge (rates over their summed time, gauges from the newer),
  unless the newer came ``early`` (the agent saw the load jump before its interval was over:
  ``agent.sampling.burst``): its rates then stand for the second alone.

A node keeps only its newest *point* (what it reported for one second, grouped by service)
and its last counters. A point stands for its second and, while no newer one came, for
``hold`` seconds after it (at least 2 s, more for a node that reports less often), so that a
report landing a little late does not show as a hole. Once a second is over, every node's
point that stands for it is folded, per service, into that service's ring (``seconds`` rows:
five minutes at 1 s): one compact row a second — the replicas (interned ids, shared from one
second to the next while they do not change) and an ``array`` of numbers: per replica cpu,
memory and the value of each of its gauges (the newest report's), per port the sums of its
traffic over the nodes and of each replica's share. So the memory is that of the services,
not of every node's copy of every endpoint, and a read
(``Windows.service``) costs the seconds asked for times that service's replicas, whatever the
other services and nodes; the current second is folded from the nodes' points on each read.

A node that stops reporting ages out: after its point's ``hold`` it counts in no current
value, after the window it is gone; ``forget`` drops a node at once (marked down) from the
current values (the seconds already past keep what it measured then).

``Windows.service`` aggregates one service over every node: the current value and the last N
seconds of each metric, per replica (an allocation) and in total, per port and over its
ports. Nothing here does I/O; time comes from the injected ``Clock``.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from elastin.clock import SYSTEM, Clock
from elastin.mesh.model.names import ClusterName
from elastin.mesh.model.traffic import MAX_JUMPED
from elastin.model.workload import MAX_APP_GAUGES, PROMETHEUS_NAME_RE

WINDOW_SECONDS = 300  # five minutes at one second
MIN_HOLD = 2  # seconds a point stands for at least (a report arriving late is no hole)
MAX_REPORT_BYTES = 1 << 20  # a larger report is refused (413)
MAX_ENTRIES = 20_000  # instances, ports or endpoints in one report at most
MAX_CLOCK_SKEW = 300.0  # seconds a report's wall clock may be from the server's (else 422)
MAX_BUCKETS = 64  # latency buckets of one port at most
P99 = 0.99

# a latency histogram: the buckets' upper bounds in ms (ascending; the last bucket, +Inf, has
# none) and per bucket the responses that took at most its bound (cumulative: Prometheus'
# ``le`` buckets; the last is every response)
Histogram = tuple[tuple[float, ...], tuple[float, ...]]


# --- the report an agent sends ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
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
    # application gauges read from its own Prometheus endpoint: (name, value), by name
    gauges: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointReading:
    """One replica of a service port as the reporting node's proxy sees it."""

    requests: int  # cumulative
    active: int = 0
    avg_ms: float = 0.0
    max_ms: float = 0.0


@dataclass(frozen=True, slots=True)
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
    # the proxy's latency histogram, counted since its totals began (None: it keeps none)
    latency: Histogram | None = None


@dataclass(frozen=True, slots=True)
class NodeReport:
    at: float  # the agent's wall clock when it sampled
    interval: float
    instances: Mapping[str, InstanceReading]
    ports: Mapping[str, PortReading]
    mono: float | None = None  # the agent's monotonic clock when it sampled (None: older agent)
    series: str = ""  # the agent process's id: another one starts a new series
    # sent before its interval was over because the load jumped (``agent.sampling.burst``):
    # its rates stand for the second alone, not merged with an earlier report's
    early: bool = False
    jumped: tuple[ClusterName, ...] = ()  # the ports whose load jumped (an early report's)


class ClockSkew(ValueError):
    """A report's wall clock is too far from the server's (the node's clock is off)."""


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
    return sys.intern(v)


def _gauges(data: Mapping[str, Any], where: str) -> tuple[tuple[str, float], ...]:
    """An instance's ``gauges``: Prometheus name -> a finite number, at most ``MAX_APP_GAUGES``."""
    raw = data.get("gauges", {})
    if not isinstance(raw, dict):
        raise ValueError(f"{where}.gauges must be an object, not {type(raw).__name__}")
    if len(raw) > MAX_APP_GAUGES:
        raise ValueError(f"{where}.gauges has {len(raw)} entries; at most {MAX_APP_GAUGES}")
    out = []
    for name, v in raw.items():
        if not isinstance(name, str) or not PROMETHEUS_NAME_RE.fullmatch(name):
            raise ValueError(f"{where}.gauges: {name!r} is not a Prometheus metric name")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{where}.gauges[{name!r}] must be a finite number, not {v!r}")
        out.append((sys.intern(name), float(v)))
    return tuple(sorted(out))


def _id(key: str, where: str) -> str:
    if not key or len(key) > 256:
        raise ValueError(f"{where}: an id must have 1 to 256 characters")
    return sys.intern(key)


def _latency(p: Mapping[str, Any], where: str) -> Histogram | None:
    """A port's ``latency_buckets`` (``[[le_ms, cumulative], ..., [null, total]]``) → a
    ``Histogram``; None when the report has none (an agent of an older version, a proxy that
    keeps no histogram for the port). ``ValueError`` naming what is wrong otherwise."""
    raw = p.get("latency_buckets")
    if raw is None:
        return None
    w = f"{where}.latency_buckets"
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_BUCKETS:
        raise ValueError(f"{w} must be a list of 2 to {MAX_BUCKETS} [le_ms, count] pairs")
    bounds: list[float] = []
    counts: list[float] = []
    for i, pair in enumerate(raw):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"{w}[{i}] must be a pair [le_ms, count]")
        le, n = pair
        last = i == len(raw) - 1
        if last and le is not None:
            raise ValueError(f"{w}: the last bucket's le must be null (+Inf: every response)")
        if not last:
            le = _num({"le": le}, "le", f"{w}[{i}]")
            if bounds and le <= bounds[-1]:
                raise ValueError(f"{w}[{i}]: the bounds must go up ({le:g} after {bounds[-1]:g})")
            bounds.append(le)
        n = _int({"count": n}, "count", f"{w}[{i}]")
        if counts and n < counts[-1]:
            raise ValueError(f"{w}[{i}]: the counts are cumulative and cannot go down")
        counts.append(float(n))
    return tuple(bounds), tuple(counts)


def parse_report(data: Any) -> NodeReport:
    """An agent's metrics report (decoded JSON) → ``NodeReport``; ``ValueError`` naming the
    field when it is malformed. Ids and names are interned (the windows keep them for
    minutes, one copy each)."""
    top = _obj(data, "the report")
    instances: dict[str, InstanceReading] = {}
    for alloc_id, raw in _obj(top.get("instances", {}), "instances").items():
        w = f"instances[{alloc_id!r}]"
        i = _obj(raw, w)
        ready = i.get("ready", False)
        if not isinstance(ready, bool):
            raise ValueError(f"{w}.ready must be true or false")
        instances[_id(alloc_id, w)] = InstanceReading(
            app=_str(i, "app", w),
            workload=_str(i, "workload", w),
            cpu=_num(i, "cpu", w),
            memory=_int(i, "memory", w),
            cpu_request=_int(i, "cpu_request", w, 0),
            memory_request=_int(i, "memory_request", w, 0),
            ready=ready,
            gauges=_gauges(i, w),
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
            _id(alloc_id, f"{w}.endpoints[{alloc_id!r}]"): EndpointReading(
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
        ports[sys.intern(name)] = PortReading(
            name=cluster,
            mode=mode,
            requests=_int(p, "requests", w),
            errors=_int(p, "errors", w, 0),
            active=_int(p, "active", w, 0),
            queued=_int(p, "queued", w, 0),
            avg_ms=_num(p, "avg_ms", w, 0),
            max_ms=_num(p, "max_ms", w, 0),
            endpoints=endpoints,
            latency=_latency(p, w),
        )
    interval = _num(top, "interval", "the report", 1.0)
    if not 0 < interval <= 3600:
        raise ValueError(f"the report's interval must be in (0, 3600] seconds, not {interval}")
    mono = None if top.get("mono") is None else _num(top, "mono", "the report")
    series = top.get("series", "")
    if not isinstance(series, str) or len(series) > 256:
        raise ValueError("the report's series must be a string of at most 256 characters")
    early = top.get("early", False)
    if not isinstance(early, bool):
        raise ValueError("the report's early must be true or false")
    names = top.get("jumped", [])
    if not isinstance(names, list) or len(names) > MAX_JUMPED:
        raise ValueError(f"the report's jumped must be a list of at most {MAX_JUMPED} ports")
    jumped = []
    for k, name in enumerate(names):
        try:
            jumped.append(ClusterName.parse(name if isinstance(name, str) else ""))
        except ValueError:
            raise ValueError(f"jumped[{k}]: not a service port <app>.<service>.<port>") from None
    return NodeReport(
        at=_num(top, "at", "the report"),
        interval=interval,
        instances=instances,
        ports=ports,
        mono=mono,
        series=series,
        early=early,
        jumped=tuple(jumped),
    )


# --- what one node measured in one second -------------------------------------------------


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class PortPoint:
    """One service port in one node's point: its total and each replica's share."""

    name: ClusterName
    total: Traffic
    endpoints: Mapping[str, Traffic]  # allocation -> its share
    # the responses of the interval per latency bucket (None: no histogram, or no rate yet)
    latency: Histogram | None = None


# --- latency histograms and their p99 -------------------------------------------------------


def histogram_quantile(q: float, h: Histogram) -> float | None:
    """The ``q`` quantile (0..1) of histogram ``h`` in ms, as Prometheus'
    ``histogram_quantile`` computes it: the bucket holding the rank ``q × count`` is found
    and the value interpolated linearly inside it (the first bucket starts at 0); a rank in
    the last bucket (+Inf) is the highest finite bound. None: no response."""
    bounds, cum = h
    total = cum[-1] if cum else 0.0
    if total <= 0 or not bounds:
        return None
    rank = q * total
    i = next(k for k, c in enumerate(cum) if c >= rank)
    if i >= len(bounds):
        return bounds[-1]
    lower = bounds[i - 1] if i > 0 else 0.0
    before = cum[i - 1] if i > 0 else 0.0
    inside = cum[i] - before
    if inside <= 0:
        return bounds[i]
    return lower + (bounds[i] - lower) * (rank - before) / inside


def _cum_at(h: Histogram, le: float) -> float:
    """The responses of ``h`` that took at most ``le`` as far as its buckets tell: those of
    its largest bound at or below ``le`` (0 below its first)."""
    bounds, cum = h
    n = 0.0
    for b, c in zip(bounds, cum, strict=False):
        if b > le:
            break
        n = c
    return n


def merge_histograms(hs: Iterable[Histogram]) -> Histogram | None:
    """The sum of histograms (several nodes' proxies, several ports). Histograms with the same
    bounds add bucket by bucket; otherwise (agents of different versions) over the union of
    their bounds, each counting at a bound what its own largest bound below it counts — so
    the sum never claims a response faster than a proxy measured it. None: none given."""
    hs = list(hs)
    if not hs:
        return None
    bounds = hs[0][0]
    if all(h[0] == bounds for h in hs):
        return bounds, tuple(map(sum, zip(*(h[1] for h in hs), strict=True)))
    union = tuple(sorted({b for h in hs for b in h[0]}))
    cum = [sum(_cum_at(h, le) for h in hs) for le in union]
    return union, (*cum, sum(h[1][-1] for h in hs))


def _latency_delta(now: Histogram | None, before: Histogram | None) -> Histogram | None:
    """The responses of the interval from two cumulative readings of a proxy's histogram;
    None without both (the first reading) or when the bounds changed. A histogram whose
    counts went down was reset (a proxy restarted without its base): it counted ``now``
    since, as ``_delta`` assumes of a counter."""
    if now is None or before is None or now[0] != before[0] or len(now[1]) != len(before[1]):
        return None
    if any(n < b for n, b in zip(now[1], before[1], strict=True)):
        return now
    return now[0], tuple(n - b for n, b in zip(now[1], before[1], strict=True))


def _add_latency(a: Histogram | None, b: Histogram | None) -> Histogram | None:
    """Two intervals' histograms together (two reports in one second)."""
    if a is None or b is None:
        return b if a is None else a
    return merge_histograms((a, b))


@dataclass(slots=True)
class _Share:
    """One node's share of one service in its point."""

    instances: dict[str, InstanceReading] = field(default_factory=dict)
    ports: dict[str, PortPoint] = field(default_factory=dict)  # port (e.g. "http") ->


@dataclass(slots=True)
class NodePoint:
    """A node's newest report, for the server's second ``second`` and ``hold`` seconds after
    while no newer one comes, grouped by service ``(app, service)``."""

    second: int
    hold: int
    services: dict[tuple[str, str], _Share]

    def stands_for(self, second: int) -> bool:
        return self.second <= second < self.second + self.hold


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


@dataclass(slots=True)
class _Node:
    point: NodePoint | None
    at: float  # the agent's wall clock of the last report
    mono: float | None  # the agent's monotonic clock of the last report
    series: str
    seen: float  # the server's monotonic time of the last report
    # the last cumulative counters: cluster -> (requests, errors), endpoint (cluster, alloc)
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)
    endpoint_counters: dict[tuple[str, str], int] = field(default_factory=dict)
    latency: dict[str, Histogram] = field(default_factory=dict)  # cluster -> the last reading


# --- a service's ring: one compact row a second ---------------------------------------------

# a traffic accumulator: ACC numbers in a row's array (NaN: nothing known)
ACC = 6
_RATE, _ERR, _FLIGHT, _WSUM, _AMAX, _MAXMS = range(ACC)
_NAN = math.nan
_EMPTY_ACC = (_NAN,) * ACC


def _nadd(a: float, b: float) -> float:
    return b if a != a else a + b


def _nmax(a: float, b: float) -> float:
    return b if a != a or b > a else a


def _fold(acc: list[float], t: Traffic) -> None:
    """Add one proxy's ``t`` to ``acc``: rates and in flight add up; the average response
    is weighted by the requests (its weight is the rate: an interval without a request has
    no average and a rate of 0), the longest is the longest."""
    r = t.rate
    if r is not None:
        acc[_RATE] = _nadd(acc[_RATE], r)
    e = t.error_rate
    if e is not None:
        acc[_ERR] = _nadd(acc[_ERR], e)
    acc[_FLIGHT] = _nadd(acc[_FLIGHT], float(t.in_flight))
    if t.avg_ms is not None:
        acc[_WSUM] = _nadd(acc[_WSUM], t.avg_ms * (r or 0.0))
        acc[_AMAX] = _nmax(acc[_AMAX], t.avg_ms)
    if t.max_ms is not None:
        acc[_MAXMS] = _nmax(acc[_MAXMS], t.max_ms)


def _combine(acc: list[float], values: array[float], off: int) -> None:
    """Add the accumulator at ``values[off:]`` to ``acc``."""
    for k in (_RATE, _ERR, _FLIGHT, _WSUM):
        acc[k] = _nadd(acc[k], values[off + k]) if values[off + k] == values[off + k] else acc[k]
    for k in (_AMAX, _MAXMS):
        acc[k] = _nmax(acc[k], values[off + k]) if values[off + k] == values[off + k] else acc[k]


def _opt(v: float) -> float | None:
    return None if v != v else v


def _traffic_values(
    acc: Any, off: int = 0, p99: float | None = None
) -> tuple[float | None, ...] | None:
    """An accumulator → the traffic metrics in ``TRAFFIC_METRICS``' order (see ``_fold``);
    None: no traffic. ``p99``: the second's, from the latency histograms (``_p99s``; None
    where no proxy keeps one, or for a replica's share: docs/mesh.md)."""
    flight = acc[off + _FLIGHT]
    if flight != flight:
        return None
    rate, amax = acc[off + _RATE], acc[off + _AMAX]
    weight = rate if rate == rate else 0.0
    if amax == amax and weight > 0:
        avg: float | None = acc[off + _WSUM] / weight
    else:
        avg = _opt(amax)
    return (_opt(rate), _opt(acc[off + _ERR]), flight, avg, _opt(acc[off + _MAXMS]), p99)


@dataclass(frozen=True, slots=True)
class _Layout:
    """What a row's numbers are about; shared by consecutive rows while it does not change.
    ``replicas``: (allocation, node, ready, cpu_request, memory_request, the names of its
    application gauges), by allocation; ``ports``: (port, the replicas with traffic on it),
    by port."""

    replicas: tuple[tuple[str, str, bool, int, int, tuple[str, ...]], ...]
    ports: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(slots=True)
class _Row:
    """One service in one second: ``values`` holds cpu, memory and its gauges per replica,
    then per port its total's accumulator and each of its replicas' (``_Layout``'s order)."""

    second: int
    layout: _Layout
    values: array[float]
    # the p99 (ms) of the second per port with a histogram, and over them all ("")
    p99: dict[str, float] | None = None


def per_second(h: Histogram, seconds: float) -> Histogram:
    """The responses of histogram ``h``, counted over ``seconds``, per second: every bucket
    divided alike, so that its own quantiles stay where they were."""
    bounds, cum = h
    return bounds, tuple(c / seconds for c in cum)


def _p99s(ports: Mapping[str, list[PortPoint]]) -> dict[str, float] | None:
    """The p99 of one second per port from its nodes' histograms summed, and over every
    port of the service (key ""); None: no port has a histogram with a response. A node's
    histogram counts the responses of its interval (5 s for ``--metrics-interval 5``): it is
    taken per second of it (``per_second``, over the interval its rates are taken over) before
    the nodes are summed, so that a node reporting less often weighs its responses of one
    second, not of its whole interval."""
    out: dict[str, float] = {}
    every: list[Histogram] = []
    for port, points in ports.items():
        hs = [
            per_second(pp.latency, pp.total.seconds)
            for pp in points
            if pp.latency is not None and pp.total.seconds > 0
        ]
        merged = merge_histograms(hs)
        if merged is None:
            continue
        every.append(merged)
        p99 = histogram_quantile(P99, merged)
        if p99 is not None:
            out[port] = p99
    if out:
        merged = merge_histograms(every)
        p99 = None if merged is None else histogram_quantile(P99, merged)
        if p99 is not None:
            out[""] = p99
    return out or None


def _row(second: int, shares: list[tuple[str, _Share]], before: _Layout | None) -> _Row:
    """The shares of one service in one second, folded over the nodes."""
    instances: dict[str, tuple[str, InstanceReading]] = {}
    ports: dict[str, list[PortPoint]] = {}
    for node_id, share in shares:
        for alloc_id, i in share.instances.items():
            instances[alloc_id] = (node_id, i)
        for port, pp in share.ports.items():
            ports.setdefault(port, []).append(pp)
    values: array[float] = array("d")
    replicas = []
    for alloc_id in sorted(instances):
        node_id, i = instances[alloc_id]
        names = tuple(name for name, _ in i.gauges)
        replicas.append((alloc_id, node_id, i.ready, i.cpu_request, i.memory_request, names))
        values.append(i.cpu)
        values.append(float(i.memory))
        values.extend(v for _, v in i.gauges)
    port_layout = []
    for port in sorted(ports):
        acc = list(_EMPTY_ACC)
        by_replica: dict[str, list[float]] = {}
        for pp in ports[port]:
            _fold(acc, pp.total)
            for alloc_id, t in pp.endpoints.items():
                _fold(by_replica.setdefault(alloc_id, list(_EMPTY_ACC)), t)
        values.extend(acc)
        names = tuple(sorted(by_replica))
        for alloc_id in names:
            values.extend(by_replica[alloc_id])
        port_layout.append((port, names))
    layout = _Layout(tuple(replicas), tuple(port_layout))
    if before is not None and before == layout:
        layout = before  # one copy while nothing changes
    return _Row(second, layout, values, _p99s(ports))


Columns = dict[str, list[Any]]  # metric -> one value a second


def _columns(names: Iterable[str], n: int) -> Columns:
    return {k: [None] * n for k in names}


def _put(cols: Columns, j: int, names: tuple[str, ...], values: Iterable[Any] | None) -> None:
    """Second ``j``'s ``values`` of metrics ``names`` (None: nothing measured)."""
    if values is not None:
        for k, x in zip(names, values, strict=True):
            cols[k][j] = x


def _usage(cpu: float, memory: float, cpu_req: float, mem_req: float) -> tuple[Any, ...]:
    """``USAGE_METRICS`` of instances that use and request these."""
    return (
        cpu,
        memory,
        float(cpu_req),
        float(mem_req),
        cpu / cpu_req if cpu_req else None,
        memory / mem_req if mem_req else None,
    )


def _series(rows: list[_Row | None]) -> dict[str, Any]:
    """Rows (one per second, oldest first; None: nothing measured) → per metric
    ``{"current", "series"}`` in total, per port (and its replicas' shares) and per replica
    (with its node: the newest; ``gauges``: name -> metric, for a replica that reported
    any); the current value is the last second's. Replicas and ports
    are those of any second; a replica has traffic metrics when it had traffic in one."""
    n = len(rows)
    total = _columns(TOTAL_METRICS, n)
    total["replicas"], total["ready"] = [0] * n, [0] * n
    replicas: dict[str, Columns] = {}
    gauges: dict[str, Columns] = {}  # allocation -> its gauges (those that ever had one)
    nodes: dict[str, str] = {}
    ports: dict[str, Columns] = {}
    shares: dict[str, dict[str, Columns]] = {}
    for j, row in enumerate(rows):
        if row is None:
            continue
        v, layout = row.values, row.layout
        p99 = row.p99 or {}
        off = 0
        cpu = mem = cpu_req = mem_req = 0.0
        ready = 0
        for alloc_id, node_id, is_ready, c_req, m_req, names in layout.replicas:
            cols = replicas.get(alloc_id)
            if cols is None:
                cols = replicas[alloc_id] = _columns(("ready", *USAGE_METRICS), n)
            nodes[alloc_id] = node_id
            cols["ready"][j] = is_ready
            _put(cols, j, USAGE_METRICS, _usage(v[off], v[off + 1], c_req, m_req))
            cpu, mem = cpu + v[off], mem + v[off + 1]
            cpu_req, mem_req = cpu_req + c_req, mem_req + m_req
            ready += is_ready
            off += 2
            if names:
                of_replica = gauges.setdefault(alloc_id, {})
                for name in names:
                    of_replica.setdefault(name, [None] * n)[j] = v[off]
                    off += 1
        if layout.replicas:
            _put(total, j, USAGE_METRICS, _usage(cpu, mem, cpu_req, mem_req))
        total["replicas"][j], total["ready"][j] = len(layout.replicas), ready
        total_acc = list(_EMPTY_ACC)
        replica_acc: dict[str, list[float]] = {}
        for port, names in layout.ports:
            _combine(total_acc, v, off)
            cols = ports.get(port)
            if cols is None:
                cols = ports[port] = _columns(TRAFFIC_METRICS, n)
            _put(cols, j, TRAFFIC_METRICS, _traffic_values(v, off, p99.get(port)))
            off += ACC
            of_port = shares.setdefault(port, {})
            for alloc_id in names:
                cols = of_port.get(alloc_id)
                if cols is None:
                    cols = of_port[alloc_id] = _columns(TRAFFIC_METRICS, n)
                _put(cols, j, TRAFFIC_METRICS, _traffic_values(v, off))
                if alloc_id in nodes and replicas[alloc_id]["ready"][j] is not None:
                    _combine(replica_acc.setdefault(alloc_id, list(_EMPTY_ACC)), v, off)
                off += ACC
        for alloc_id, acc in replica_acc.items():
            cols = replicas[alloc_id]
            if "requests_per_s" not in cols:
                cols.update(_columns(TRAFFIC_METRICS, n))
            _put(cols, j, TRAFFIC_METRICS, _traffic_values(acc))
        if layout.ports:
            _put(total, j, TRAFFIC_METRICS, _traffic_values(total_acc, p99=p99.get("")))

    def metrics(cols: Columns) -> dict[str, Any]:
        return {k: {"current": x[-1], "series": x} for k, x in cols.items()}

    return {
        "total": metrics(total),
        "ports": {
            p: {
                **metrics(ports[p]),
                "replicas": {a: metrics(c) for a, c in sorted(shares[p].items())},
            }
            for p in sorted(ports)
        },
        "replicas": {
            a: {
                "node": nodes[a],
                **metrics(replicas[a]),
                **({"gauges": metrics(gauges[a])} if a in gauges else {}),
            }
            for a in sorted(replicas)
        },
    }


@dataclass(slots=True)
class _Service:
    rows: list[_Row | None]
    last: int = 0  # the newest second with a row


# --- the windows ---------------------------------------------------------------------------


class Windows:
    """Every node's last ``seconds`` of metrics at 1 s resolution, per service (see the
    module's doc)."""

    def __init__(self, clock: Clock = SYSTEM, seconds: int = WINDOW_SECONDS) -> None:
        self.clock = clock
        self.seconds = seconds
        self._nodes: dict[str, _Node] = {}
        self._services: dict[tuple[str, str], _Service] = {}
        self._done: int | None = None  # the last second folded into the services' rings

    def nodes(self) -> list[str]:
        self._prune()
        return sorted(self._nodes)

    def forget(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def record(self, node_id: str, report: NodeReport) -> None:
        """One report of ``node_id``. ``ClockSkew`` (a ``ValueError``) when its wall clock is
        more than ``MAX_CLOCK_SKEW`` from the server's: nothing of it is taken."""
        now = self.clock.time()
        if abs(report.at - now) > MAX_CLOCK_SKEW:
            raise ClockSkew(
                f"the report was sampled at {report.at:.3f} on the node's clock, "
                f"{report.at - now:+.0f} s from the server's (at most {MAX_CLOCK_SKEW:.0f} s)"
            )
        second = int(now)
        self._advance(second)
        hold = max(MIN_HOLD, math.ceil(report.interval) + 1)
        node = self._nodes.get(node_id)
        seconds = 0.0
        if node is None:
            node = _Node(None, report.at, report.mono, report.series, self.clock.monotonic())
            self._nodes[node_id] = node
            new_series = True
        else:
            new_series = report.series != node.series
            if not new_series:
                if report.mono is not None and node.mono is not None:
                    seconds = report.mono - node.mono
                else:  # an agent without a monotonic clock in its reports
                    seconds = report.at - node.at
                new_series = seconds <= 0  # its clock went back, or a repeated report
        old_counters = {} if new_series else node.counters
        old_endpoints = {} if new_series else node.endpoint_counters
        services: dict[tuple[str, str], _Share] = {}
        for alloc_id, i in report.instances.items():
            share = services.get((i.app, i.workload))
            if share is None:
                share = services[(i.app, i.workload)] = _Share()
            share.instances[alloc_id] = i
        counters: dict[str, tuple[int, int]] = {}
        endpoint_counters: dict[tuple[str, str], int] = {}
        old_latency = {} if new_series else node.latency
        latency: dict[str, Histogram] = {}
        for key, p in report.ports.items():
            before = old_counters.get(key)
            counters[key] = (p.requests, p.errors)
            # ``active`` is the backend's sessions (HAProxy's ``scur``), which count its
            # queued requests already (``queued`` is the share of them still waiting)
            total = _traffic(p.requests, p.errors, p.active, p.avg_ms, p.max_ms, before, seconds)
            eps: dict[str, Traffic] = {}
            for alloc_id, e in p.endpoints.items():
                endpoint_counters[(key, alloc_id)] = e.requests
                prev = old_endpoints.get((key, alloc_id))
                eps[alloc_id] = _traffic(
                    e.requests,
                    0,
                    e.active,
                    e.avg_ms,
                    e.max_ms,
                    None if prev is None else (prev, 0),
                    seconds,
                )
            svc = (p.name.app, p.name.service)
            share = services.get(svc)
            if share is None:
                share = services[svc] = _Share()
            if p.latency is not None:
                latency[key] = p.latency
            in_interval = _latency_delta(p.latency, old_latency.get(key))
            share.ports[p.name.port] = PortPoint(p.name, total, eps, in_interval)
        node.at, node.mono, node.series = report.at, report.mono, report.series
        node.seen = self.clock.monotonic()
        node.counters, node.endpoint_counters = counters, endpoint_counters
        node.latency = latency
        old = node.point
        # a second report in this second merges with the first (rates over their summed
        # time) — unless it came early because the load jumped: then the rates before the
        # jump are not the second's, and the early report's stand alone
        if old is not None and old.second == second and not report.early:
            for svc, share in services.items():
                if (was := old.services.get(svc)) is None:
                    continue
                for port, pp in share.ports.items():
                    if (wp := was.ports.get(port)) is not None:
                        eps = {
                            a: wp.endpoints[a].merged(t) if a in wp.endpoints else t
                            for a, t in pp.endpoints.items()
                        }
                        share.ports[port] = PortPoint(
                            pp.name,
                            wp.total.merged(pp.total),
                            eps,
                            _add_latency(wp.latency, pp.latency),
                        )
        node.point = NodePoint(second, hold, services)
        self._prune()

    def _advance(self, now: int) -> None:
        """Fold every second before ``now`` not folded yet into the services' rings: each
        node's point that stands for it."""
        done = self._done
        if done is not None and now - 1 <= done:
            if now - 1 < done:  # the server's clock went back: go on from there
                self._done = now - 1
            return
        start = now - self.seconds if done is None else max(done + 1, now - self.seconds)
        for second in range(start, now):
            by_service: dict[tuple[str, str], list[tuple[str, _Share]]] = {}
            for node_id, node in self._nodes.items():
                p = node.point
                if p is None or not p.stands_for(second):
                    continue
                for svc, share in p.services.items():
                    by_service.setdefault(svc, []).append((node_id, share))
            for svc, shares in by_service.items():
                ring = self._services.get(svc)
                if ring is None:
                    ring = self._services[svc] = _Service([None] * self.seconds)
                before = ring.rows[(second - 1) % self.seconds]
                layout = before.layout if before is not None else None
                ring.rows[second % self.seconds] = _row(second, shares, layout)
                ring.last = second
        self._done = now - 1
        for svc in [s for s, r in self._services.items() if r.last <= now - self.seconds]:
            del self._services[svc]

    def _prune(self) -> None:
        """Nodes silent for longer than the window are gone."""
        now = self.clock.monotonic()
        for node_id in [n for n, x in self._nodes.items() if now - x.seen > self.seconds]:
            del self._nodes[node_id]

    def _current(self, svc: tuple[str, str], second: int) -> _Row | None:
        """The service's row for the current ``second``, from the nodes' points (not kept)."""
        shares = [
            (node_id, share)
            for node_id, node in self._nodes.items()
            if node.point is not None
            and node.point.stands_for(second)
            and (share := node.point.services.get(svc)) is not None
        ]
        return _row(second, shares, None) if shares else None

    def service(self, app: str, service: str, last: int = 60) -> dict[str, Any]:
        """One service over every node: per metric its current value and the last ``last``
        seconds (one value a second, oldest first; None where nothing was measured), in
        total, per port and per replica. See docs/api.md for the shape."""
        self._prune()
        last = max(1, min(int(last), self.seconds))
        now = int(self.clock.time())
        self._advance(now)
        times = list(range(now - last + 1, now + 1))
        ring = self._services.get((app, service))
        rows: list[_Row | None] = []
        for t in times[:-1]:
            row = ring.rows[t % self.seconds] if ring is not None else None
            rows.append(row if row is not None and row.second == t else None)
        rows.append(self._current((app, service), now))
        return {
            "app": app,
            "service": service,
            "at": now,
            "times": times,
            **_series(rows),
        }


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


TOTAL_METRICS = (*USAGE_METRICS, "replicas", "ready", *TRAFFIC_METRICS)
