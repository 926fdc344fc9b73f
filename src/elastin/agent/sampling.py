"""The agent's one-second metrics report, built from what it samples (pure).

Every ``--metrics-interval`` (1 s by default) the agent's metrics loop samples each
instance (``AllocRunner.sample``: cpu from the cgroup's usage since the previous sample,
memory) and reads its proxy's counters (``MeshManager.read_stats``: totals kept monotonic
across HAProxy's reloads), then clears the proxy's max values so that ``rtime_max`` is the
longest response of the next interval. ``build_report`` turns that into the body of ``POST
/v1/nodes/{id}/metrics`` — checked and kept by the server's ``windows.py``, in memory only:

    {"at": <wall clock of the sample>, "mono": <monotonic clock of the sample>,
     "series": <this agent process's id>, "interval": <seconds>,
     "instances": {<allocation>: {"app", "workload", "cpu" (millicores), "memory" (bytes),
                                  "cpu_request", "memory_request", "ready",
                                  "gauges": {<Prometheus name>: <value>} (when read)}},
     "ports": {"<app>.<service>.<port>": {"mode", "requests", "errors" (cumulative),
               "active", "queued", "avg_ms", "max_ms",
               "endpoints": {<allocation>: {"requests" (cumulative), "active", "avg_ms",
                                            "max_ms"}},
               "latency_buckets": [[<le ms>, <cumulative>], ..., [null, <total>]]}}}

``latency_buckets`` only for a port whose proxy keeps a latency histogram (a service that
autoscales on its p99, ``Cluster.latency_histogram``): the responses that took at most
``le`` ms since the proxy's totals began (monotonic across reloads, as ``requests``), the
last bucket (``null``: +Inf) all of them; the server turns their differences into a p99.

The server counts rates over ``mono``'s difference between two reports (a step of the wall
clock bends nothing) and starts a new series when ``series`` changes (an agent restarted);
``at`` only has to be within a few minutes of the server's clock.

Between two reports the loop looks at its proxy's arrival counters ``BURST_LOOKS`` times
(one cheap ``show stat`` of the backends); when a port's load jumped (``burst``) it reports
at once with ``"early": true`` and ``"jumped": [<port>, ...]`` and its interval starts
again: the server takes that report's rates for its second alone and evaluates the
autoscaler at once for the services of those ports.

``gauges``: an autoscaled service's application metrics (``autoscale.metrics`` entries of
kind ``app``), scraped from each ready instance's own Prometheus endpoint
(``gauge_pages`` says which; ``agent/gauges.py`` reads them, ``agent/promtext.py`` parses):
a gauge that could not be read is left out.

The heartbeat (every 5 s, it writes the node's liveness) keeps sending usage too; while the
metrics loop runs it takes the loop's last sample (``recent_usage``) instead of sampling
again: a driver's cpu is an average since the previous sample, whoever took it, and two
loops sampling a moment apart would each get a meaningless one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from elastin.mesh.model.traffic import LATENCY_BOUNDS_MS, MAX_JUMPED, ClusterStats
from elastin.model.cluster import Allocation, Usage
from elastin.model.workload import MAX_APP_GAUGES, Workload

DEFAULT_INTERVAL = 1.0
BURST_FACTOR = 1.5  # a port's load since the last report this many times its last rate...
BURST_MIN = 20.0  # ...and this many requests per second above it: report now (``burst``)
BURST_SIGMAS = 4.0  # ...and this far above what chance gives (a Poisson count's deviations)
BURST_LOOKS = 4  # looks at the proxy's counters per interval for a jump
BURST_BASELINE = 3  # intervals the rate a jump is judged against is measured over


def is_ready(
    alloc: Allocation, workload: Workload | None, status: str, healthy: bool | None
) -> bool:
    """Whether an instance takes traffic: it runs and — when its service has a health
    check — its last verdict is healthy (the registry's definition, docs/mesh.md)."""
    if status != "running":
        return False
    has_check = workload is not None and workload.health is not None
    return healthy is True if has_check else healthy is not False


def instance_reading(
    alloc: Allocation, usage: Usage, ready: bool, gauges: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """One instance's entry of the report; ``gauges``: the application gauges read from it
    (left out when none was)."""
    return {
        "app": alloc.app,
        "workload": alloc.workload,
        "cpu": round(usage.cpu, 3),
        "memory": usage.memory,
        "cpu_request": alloc.resources.cpu,
        "memory_request": alloc.resources.memory,
        "ready": ready,
        **({"gauges": dict(gauges)} if gauges else {}),
    }


@dataclass(frozen=True)
class Page:
    """A Prometheus endpoint of one instance (``127.0.0.1:<port><path>``, where its health
    check probes it) and the gauges to read from it (``agent/gauges.py``)."""

    port: int
    path: str
    names: tuple[str, ...]
    http2: bool = False  # the port is http2: HTTP/2 without TLS (h2c), with prior knowledge

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"


def gauge_pages(workload: Workload | None, ports: Mapping[str, int]) -> tuple[Page, ...]:
    """The pages to scrape for ``workload``'s application metrics (``autoscale.metrics``
    of kind ``app``) on an instance with ``ports`` (port name → its number): one per
    distinct port and path, with the gauges read from it, at most ``MAX_APP_GAUGES`` gauges in
    all. Empty when the service has none, or the instance lacks the port."""
    policy = workload.autoscale if workload is not None else None
    if policy is None or not policy.horizontal:
        return ()
    by_page: dict[tuple[int, str, bool], list[str]] = {}
    count = 0
    h2c = {p.name for p in workload.ports if p.protocol == "http2"} if workload else set()
    for m in policy.metrics:
        if m.kind != "app" or count >= MAX_APP_GAUGES:
            continue
        port = ports.get(m.port)
        if not port:
            continue
        names = by_page.setdefault((port, m.path, m.port in h2c), [])
        if m.name not in names:
            names.append(m.name)
            count += 1
    return tuple(
        Page(port, path, tuple(names), http2) for (port, path, http2), names in by_page.items()
    )


def endpoint_allocation(endpoint_id: str, port: str) -> str:
    """The allocation of a mesh endpoint id (``<allocation>-<port>``)."""
    suffix = f"-{port}"
    return endpoint_id[: -len(suffix)] if endpoint_id.endswith(suffix) else endpoint_id


def latency_buckets(counts: Sequence[int]) -> list[list[int | None]]:
    """A port's latency histogram (``ClusterStats.latency``: responses per bucket) as the
    report carries it: ``[[le_ms, cumulative], ..., [None, total]]``, Prometheus' ``le``
    buckets (each counts the responses that took at most ``le_ms``; None: +Inf, all of
    them)."""
    out: list[list[int | None]] = []
    total = 0
    for le, n in zip((*LATENCY_BOUNDS_MS, None), counts, strict=True):
        total += n
        out.append([le, total])
    return out


def port_reading(s: ClusterStats) -> dict[str, Any]:
    latency = (
        {"latency_buckets": latency_buckets(s.latency)}
        if len(s.latency) == len(LATENCY_BOUNDS_MS) + 1
        else {}
    )
    return {
        "mode": "tcp" if s.mode == "tcp" else "http",
        "requests": s.requests,
        "errors": s.errors,
        "active": s.active,
        "queued": s.queued,
        "avg_ms": s.avg_response_ms,
        "max_ms": s.max_response_ms,
        "endpoints": {
            endpoint_allocation(e.id, s.port): {
                "requests": e.served,
                "active": e.active,
                "avg_ms": e.avg_response_ms,
                "max_ms": e.max_response_ms,
            }
            for e in s.endpoints
        },
        **latency,
    }


def build_report(
    at: float,
    interval: float,
    instances: Mapping[str, dict[str, Any]],
    mesh: Mapping[str, ClusterStats],
    mono: float | None = None,
    series: str = "",
    jumped: Sequence[str] = (),
) -> dict[str, Any]:
    """The metrics report's body (see the module's doc); ``jumped``: the ports whose load
    jumped (``burst``) — the report goes before its interval is over, marked ``early``."""
    return {
        "at": at,
        **({} if mono is None else {"mono": mono, "series": series}),
        "interval": interval,
        **({"early": True, "jumped": list(jumped)[:MAX_JUMPED]} if jumped else {}),
        "instances": dict(instances),
        "ports": {name: port_reading(s) for name, s in mesh.items()},
    }


def port_baseline(
    readings: Sequence[tuple[float, Mapping[str, ClusterStats]]],
) -> dict[str, tuple[float, float]]:
    """Each port's baseline for ``burst`` from the last readings of the proxy's totals
    (``(monotonic time, totals)``, oldest first; the report's the newest): ``(arrivals per
    second, how many they were measured from)`` over the readings' span — several
    intervals, so that the baseline's own noise is small. While it catches up after a step,
    a step may make two or three early reports (each a report and one evaluation of its
    service). A port new since the oldest reading, or a counter that went down, has none."""
    if len(readings) < 2:
        return {}
    (t_new, newest), (t_old, old) = readings[-1], readings[0]
    if t_new <= t_old:
        return {}
    out: dict[str, tuple[float, float]] = {}
    for key, s in newest.items():
        b = old.get(key)
        if b is not None and s.requests >= b.requests:
            came = float(s.requests - b.requests)
            out[key] = (came / (t_new - t_old), came)
    return out


def burst(
    before: Mapping[str, int],
    baseline: Mapping[str, tuple[float, float]],
    now: Mapping[str, int],
    seconds: float,
) -> list[str]:
    """The ports whose load jumped since the last report (pure): their arrivals since then
    (``now`` − ``before``: one proxy worker's raw counters, ``seconds`` apart) at least
    ``BURST_FACTOR`` times what their ``baseline`` rate (``port_baseline`` over the last
    ``BURST_BASELINE`` intervals) gives for that time, at least ``BURST_MIN`` requests per
    second above it, and more than chance would give: ``BURST_SIGMAS`` standard deviations
    above the expected count, counting both the look's Poisson noise and the baseline's own
    (it was measured from a finite count: variance ``e + e² / n`` for ``e`` expected from
    ``n`` counted). At 90 requests/s a look of 0.25 s holds 22.5 on average; 42 are needed.
    The agent then reports at once (``early``) rather than at the end of its interval, and
    the server's autoscaler evaluates the services of those ports then: a load step is seen
    in a fraction of a second, not up to an interval later (what Knative's panic window is
    for). A port without both readings, or whose counter went down (another worker), is not
    judged."""
    if seconds <= 0:
        return []
    out = []
    for key, count in now.items():
        b, base = before.get(key), baseline.get(key)
        if b is None or base is None or count < b:
            continue
        rate, counted = base
        came, expected = count - b, rate * seconds
        noise = math.sqrt(max(expected + expected * expected / max(counted, 1.0), 1.0))
        if (
            came >= BURST_FACTOR * expected
            and came >= expected + BURST_MIN * seconds
            and came - expected >= BURST_SIGMAS * noise
        ):
            out.append(key)
    return out


def recent_usage(usage: Usage, running: bool, now: float, max_age: float) -> Usage | None:
    """``usage`` (a runner's last sample) when it is at most ``max_age`` seconds old (wall
    clock) and its instance runs; None: sample again."""
    if not running or usage.sampled_at <= 0 or not 0 <= now - usage.sampled_at <= max_age:
        return None
    return usage
