"""HAProxy's runtime statistics (``show stat``) read into the mesh's traffic model (pure).

The one place that parses ``show stat``'s CSV. The agent asks its proxy for it and
``parse_stats`` turns it into one ``mesh.model.traffic.ClusterStats`` per mesh cluster: a
backend ``c_<app>.<service>.<port>`` (``render.py`` names them so) becomes the service port
``ClusterName(app, service, port)``, each of its servers ``e_<endpoint id>`` an
``EndpointStats``; other proxies (listeners, stats) are ignored. ``allocation_in_flight``
answers the drain's question from the servers-only form (``show stat -1 4 -1``).

HAProxy's counters start again at zero in every new worker: after each reload (and a
restart). ``Totals`` keeps the totals the agent reports monotonic: it knows which worker
counted (``show info``'s Pid, ``split_info``), and when another worker answers, what the
previous one had counted at its last reading joins a base that is added to every later
reading. Requests the old worker still finishes after that reading are not counted (the
agent reads just before it reloads, so these are the few in flight across the reload).

Only the agent imports this module: the client, the server and the CLI know the traffic
model, not HAProxy.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

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


def split_info(text: str) -> tuple[int | None, str]:
    """``show info;show stat ...``'s answer -> (the worker's pid, the rest: ``show stat``'s
    CSV). ``(None, text)`` when it does not start with ``show info``'s block."""
    head, sep, rest = text.partition("\n\n")
    if not sep or not head.startswith("Name:"):
        return None, text
    for line in head.splitlines():
        key, _, value = line.partition(":")
        if key == "Pid" and value.strip().isdigit():
            return int(value), rest
    return None, rest


# the cumulative counters of ``ClusterStats`` (the others are gauges: in flight, queued, the
# recent average response time); an endpoint's ``served`` is one too ("endpoint:<id>")
COUNTERS = (
    "requests",
    "responses_2xx",
    "responses_3xx",
    "responses_4xx",
    "responses_5xx",
    "connect_errors",
    "response_errors",
    "retries",
    "redispatches",
)
ENDPOINT = "endpoint:"
Counts = dict[str, int]


def counts(s: ClusterStats) -> Counts:
    """The counters of one cluster's stats, by name."""
    out = {k: int(getattr(s, k)) for k in COUNTERS}
    out.update({ENDPOINT + e.id: e.served for e in s.endpoints})
    return out


def plus(s: ClusterStats, base: Mapping[str, int]) -> ClusterStats:
    """``s`` with ``base`` added to its counters."""
    if not base:
        return s
    endpoints = tuple(
        replace(e, served=e.served + base.get(ENDPOINT + e.id, 0)) for e in s.endpoints
    )
    grown = {k: int(getattr(s, k)) + base.get(k, 0) for k in COUNTERS}
    return replace(s, endpoints=endpoints, **grown)  # type: ignore[arg-type]


def zero(s: ClusterStats) -> ClusterStats:
    """``s`` with its counters at zero (its gauges kept)."""
    endpoints = tuple(replace(e, served=0) for e in s.endpoints)
    return replace(s, endpoints=endpoints, **dict.fromkeys(COUNTERS, 0))  # type: ignore[arg-type]


@dataclass
class Totals:
    """Per-cluster counters that never go back across the proxy's reloads and restarts
    (pure; the agent keeps one and saves it when its base moves, ``to_data``/``from_data``).

    ``worker``: the pid of the worker whose counts are not in ``base`` yet; ``last``: its
    counts at the last reading; ``base``: what earlier workers had counted."""

    worker: int = 0
    base: dict[str, Counts] = field(default_factory=dict)
    last: dict[str, Counts] = field(default_factory=dict)
    # workers whose counts joined the base: a late reading of one (sent before a reload,
    # answered after a newer worker's) is not counted again
    retired: list[int] = field(default_factory=list)

    def add(
        self, worker: int | None, raw: Mapping[str, ClusterStats]
    ) -> tuple[dict[str, ClusterStats], bool]:
        """A reading of ``worker`` (its pid; None when unknown) -> the totals, and whether
        the base moved (another worker answered: what the previous one counted joined it).
        Without a pid, a counter that went down tells that another worker answers."""
        if worker and worker in self.retired:  # late: its counts are in the base already
            late = {
                n: plus(zero(s), _sum(self.base.get(n, {}), self.last.get(n, {})))
                for n, s in raw.items()
            }
            return late, False
        now = {name: counts(s) for name, s in raw.items()}
        if worker and self.worker:
            moved = worker != self.worker
        else:
            moved = any(
                v < self.last.get(name, {}).get(k, 0)
                for name, c in now.items()
                for k, v in c.items()
            )
        if moved:
            self.base = {
                name: _sum(self.base.get(name, {}), last) for name, last in self.last.items()
            }
            if self.worker:
                self.retired = [*self.retired[-15:], self.worker]
        self.worker = worker or self.worker
        self.last = now
        return {name: plus(s, self.base.get(name, {})) for name, s in raw.items()}, moved

    def to_data(self) -> dict[str, object]:
        return {
            "worker": self.worker,
            "base": self.base,
            "last": self.last,
            "retired": self.retired,
        }

    @classmethod
    def from_data(cls, data: object) -> Totals:
        """From ``to_data``'s form; an empty ``Totals`` from anything else."""
        if not isinstance(data, dict):
            return cls()
        try:
            return cls(
                worker=int(data.get("worker", 0)),
                base=_table(data.get("base", {})),
                last=_table(data.get("last", {})),
                retired=[int(pid) for pid in data.get("retired", [])],
            )
        except (TypeError, ValueError, AttributeError):
            return cls()


def _sum(a: Mapping[str, int], b: Mapping[str, int]) -> Counts:
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}


def _table(data: object) -> dict[str, Counts]:
    if not isinstance(data, dict):
        raise TypeError("not a table of counters")
    return {str(name): {str(k): int(v) for k, v in c.items()} for name, c in data.items()}
