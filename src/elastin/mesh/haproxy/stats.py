"""HAProxy's runtime statistics (``show stat``) read into the mesh's traffic model (pure).

The one place that parses ``show stat``'s CSV. The agent asks its proxy for it and
``parse_stats`` turns it into one ``mesh.model.traffic.ClusterStats`` per mesh cluster: a
backend ``c_<app>.<service>.<port>`` (``render.py`` names them so) becomes the service port
``ClusterName(app, service, port)``, each of its servers ``e_<endpoint id>`` an
``EndpointStats``; other proxies (listeners, stats) are ignored. ``allocation_in_flight``
answers the drain's question from the servers-only form (``show stat -1 4 -1``).

Only the agent imports this module: the client, the server and the CLI know the traffic
model, not HAProxy.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from elastin.mesh.model.names import ClusterName
from elastin.mesh.model.traffic import ClusterStats, EndpointStats

BACKEND_PREFIX = "c_"
SERVER_PREFIX = "e_"


def _int(row: dict[str, str], key: str) -> int:
    value = row.get(key) or ""
    return int(value) if value.lstrip("-").isdigit() else 0


def _rows(text: str) -> Iterator[tuple[ClusterName, str, dict[str, str]]]:
    """``(cluster, svname, row)`` for every row of a mesh cluster's backend."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        return
    header = lines[0][2:].split(",")
    for row in csv.DictReader(io.StringIO("\n".join(lines[1:])), fieldnames=header):
        px = row.get("pxname") or ""
        if not px.startswith(BACKEND_PREFIX):
            continue
        try:
            cluster = ClusterName.parse(px[len(BACKEND_PREFIX) :])
        except ValueError:
            continue  # not a mesh cluster
        yield cluster, row.get("svname") or "", row


def _endpoint(sv: str, row: dict[str, str]) -> EndpointStats:
    return EndpointStats(
        id=sv[len(SERVER_PREFIX) :],
        status=row.get("status") or "",
        active=_int(row, "scur"),
        served=_int(row, "stot"),
        check=row.get("check_status") or "",
    )


def parse_stats(text: str) -> dict[str, ClusterStats]:
    """``show stat`` CSV → stats per mesh cluster, keyed by the cluster's name."""
    servers: dict[ClusterName, list[EndpointStats]] = {}
    backends: dict[ClusterName, dict[str, str]] = {}
    for cluster, sv, row in _rows(text):
        if sv == "BACKEND":
            backends[cluster] = row
        elif sv.startswith(SERVER_PREFIX):
            servers.setdefault(cluster, []).append(_endpoint(sv, row))
    out: dict[str, ClusterStats] = {}
    for cluster, row in backends.items():
        mode = row.get("mode") or "http"
        out[str(cluster)] = ClusterStats(
            app=cluster.app,
            service=cluster.service,
            port=cluster.port,
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


def allocation_in_flight(text: str, allocation: str) -> int:
    """Requests or connections in flight on the endpoints of ``allocation`` (ids
    ``<allocation>-<port>``) in every mesh cluster of ``show stat`` (servers suffice)."""
    prefix = f"{SERVER_PREFIX}{allocation}-"
    return sum(_int(row, "scur") for _, sv, row in _rows(text) if sv.startswith(prefix))
