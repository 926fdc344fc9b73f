"""HAProxy's runtime statistics (``show stat``) read back into Elastin's names (pure).

The agent asks its proxy for ``show stat`` and gets CSV; ``parse_stats`` turns it into one
``ClusterStats`` per mesh cluster (backend ``c_<app>.<service>.<port>``) with the counters an
operator asks about first: requests, responses by class, connection and response errors,
retries, what is in flight, the recent average response time, and each endpoint's state.
The agent exports them on its ``/metrics`` labelled with the app, service and port, and
sends them with its heartbeat, so the server can answer for the whole cluster
(``elastin traffic``, ``/v1/metrics``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

BACKEND_PREFIX = "c_"
SERVER_PREFIX = "e_"


@dataclass(frozen=True)
class EndpointStats:
    id: str  # the mesh endpoint id (<allocation>-<port>)
    status: str  # UP, DOWN, MAINT, DRAIN, "no check", ...
    active: int  # requests/connections in flight (scur)
    served: int  # requests or connections sent to it in total
    check: str = ""  # the last health check's status (L4OK, L7STS, ...)


@dataclass(frozen=True)
class ClusterStats:
    cluster: str  # <app>.<service>.<port>
    mode: str  # http or tcp
    requests: int  # HTTP requests, or TCP connections
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
    endpoints: tuple[EndpointStats, ...] = ()

    @property
    def errors(self) -> int:
        """Failed requests as a caller sees them: 5xx answers and broken connections."""
        return self.responses_5xx + self.response_errors

    @property
    def labels(self) -> dict[str, str]:
        app, _, rest = self.cluster.partition(".")
        service, _, port = rest.rpartition(".")
        return {"app": app, "service": service, "port": port}


def _int(row: dict[str, str], key: str) -> int:
    value = row.get(key) or ""
    return int(value) if value.lstrip("-").isdigit() else 0


def parse_stats(text: str) -> dict[str, ClusterStats]:
    """``show stat`` CSV → stats per mesh cluster (other proxies are ignored)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    header = lines[0][2:].split(",")
    rows = csv.DictReader(io.StringIO("\n".join(lines[1:])), fieldnames=header)
    servers: dict[str, list[EndpointStats]] = {}
    backends: dict[str, dict[str, str]] = {}
    for row in rows:
        px, sv = row.get("pxname") or "", row.get("svname") or ""
        if not px.startswith(BACKEND_PREFIX):
            continue
        cluster = px[len(BACKEND_PREFIX) :]
        if sv == "BACKEND":
            backends[cluster] = row
        elif sv.startswith(SERVER_PREFIX):
            servers.setdefault(cluster, []).append(
                EndpointStats(
                    id=sv[len(SERVER_PREFIX) :],
                    status=row.get("status") or "",
                    active=_int(row, "scur"),
                    served=_int(row, "stot"),
                    check=row.get("check_status") or "",
                )
            )
    out: dict[str, ClusterStats] = {}
    for cluster, row in backends.items():
        mode = row.get("mode") or "http"
        out[cluster] = ClusterStats(
            cluster=cluster,
            mode=mode,
            requests=_int(row, "req_tot") if mode == "http" else _int(row, "stot"),
            responses_2xx=_int(row, "hrsp_2xx"),
            responses_3xx=_int(row, "hrsp_3xx"),
            responses_4xx=_int(row, "hrsp_4xx"),
            responses_5xx=_int(row, "hrsp_5xx"),
            connect_errors=_int(row, "econ"),
            response_errors=_int(row, "eresp"),
            retries=_int(row, "wretr"),
            redispatches=_int(row, "wredis"),
            active=_int(row, "scur"),
            queued=_int(row, "qcur"),
            avg_response_ms=_int(row, "rtime"),
            endpoints=tuple(servers.get(cluster, ())),
        )
    return out


# (metric name, help, type) for ``prometheus_lines``
_METRICS: tuple[tuple[str, str, str], ...] = (
    ("requests_total", "Requests (TCP: connections) the mesh sent to the service.", "counter"),
    ("errors_total", "5xx answers and broken responses from the service.", "counter"),
    ("connect_errors_total", "Failed connections to the service's endpoints.", "counter"),
    ("retries_total", "Requests the mesh retried.", "counter"),
    ("in_flight", "Requests in flight to the service.", "gauge"),
    ("response_ms", "Average response time over the last 1,024 requests.", "gauge"),
    ("endpoints_up", "Endpoints of the service the proxy considers up.", "gauge"),
)


def _values(s: ClusterStats) -> dict[str, float]:
    return {
        "requests_total": s.requests,
        "errors_total": s.errors,
        "connect_errors_total": s.connect_errors,
        "retries_total": s.retries,
        "in_flight": s.active,
        "response_ms": s.avg_response_ms,
        "endpoints_up": sum(1 for e in s.endpoints if e.status.startswith("UP")),
    }


def prometheus_lines(
    groups: list[tuple[dict[str, ClusterStats], dict[str, str]]],
) -> list[str]:
    """Prometheus text for groups of ``(stats, extra labels)`` (e.g. one per node), each
    sample labelled app, service and port plus the group's labels."""
    lines: list[str] = []
    for name, help_, kind in _METRICS:
        lines += [f"# HELP elastin_mesh_{name} {help_}", f"# TYPE elastin_mesh_{name} {kind}"]
        for stats, extra in groups:
            for cluster in sorted(stats):
                s = stats[cluster]
                text = ",".join(f'{k}="{v}"' for k, v in {**s.labels, **extra}.items())
                lines.append(f"elastin_mesh_{name}{{{text}}} {_values(s)[name]:g}")
    return lines
