"""HAProxy's runtime statistics (``show stat``) read into the mesh's traffic model (pure).

The one place that parses ``show stat``'s CSV. The agent asks its proxy for it and
``parse_stats`` turns it into one ``mesh.model.traffic.ClusterStats`` per mesh cluster: a
backend ``c_<app>.<service>.<port>`` (``render.py`` names them so) becomes the service port
``ClusterName(app, service, port)``, each of its servers ``e_<endpoint id>`` an
``EndpointStats``; other proxies (listeners, stats) are ignored. ``endpoints_in_flight`` and
``allocation_in_flight`` answer the drain's question (``InFlight``: HTTP requests and TCP
connections apart) from the answers of every worker (servers suffice).
``rtime_max`` (the longest response) is HAProxy's since its max values were last cleared
(``CLEAR_MAX``, which the agent's metrics loop sends after each reading; it leaves every
cumulative counter alone). ``clear counters`` clears every max value of the whole process,
not only ``rtime_max``: also ``smax``, ``qmax``, ``rate_max``, ``ttime_max`` (and the other
``*_max`` of backends and servers), the frontends' maxima (``smax``, ``rate_max``,
``req_rate_max``, ``conn_rate_max``...; also what HAProxy's Prometheus exporter shows as
``*_max``) and the counters of ``show activity``: after it none of these means "since the
proxy started". And it is not atomic with the reading: a response that finishes between
``show stat`` and the clear is in neither interval's ``rtime_max`` (its time is lost from
the max; the request itself is counted).

HAProxy's counters start again at zero in every new worker: after each reload (and a
restart). ``Totals`` keeps the totals the agent reports monotonic: it knows which worker
counted (``show info``'s Pid and Start_time_sec, ``split_info``: a pid alone is reused, by a
restarted proxy or after a reboot), and when another worker answers — or a counter went down,
which only a new worker's can — what the previous one had counted at its last reading joins
a base that is added to every later reading. Requests the old worker still finishes after
that reading are not counted (the agent reads just before it reloads, so these are the few
in flight across the reload). The base keeps only the endpoints the newest worker serves.

For a service that autoscales on its p99, the proxy also keeps a latency histogram in a
stick table (``render._latency_histogram``): ``stats_command`` asks for those tables with
``show stat`` and ``parse_latency`` reads them into ``ClusterStats.latency``; its counters
are cumulative and ``Totals`` keeps them monotonic as the others (``latency:<bucket>``).
A GPC counter is 32 bits: one that wraps reads as a counter gone down (a new base).

Only the agent imports this module: the client, the server and the CLI know the traffic
model, not HAProxy.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from elastin.mesh.haproxy.render import backend_name
from elastin.mesh.model.names import ClusterName
from elastin.mesh.model.traffic import LATENCY_BOUNDS_MS, ClusterStats, EndpointStats
from elastin.mesh.model.types import MeshSnapshot

# clears every max value of the process (rtime_max, smax, qmax, rate_max, ttime_max, the
# frontends' maxima) and `show activity`, never a cumulative counter; a response finishing
# between the `show stat` before it and the clear is lost from the max (see the doc above)
CLEAR_MAX = "clear counters"
BACKEND_PREFIX = "c_"
SERVER_PREFIX = "e_"
# which worker counted, and its counters (backends and servers)
STATS_COMMAND = "show info;show stat -1 6 -1"
# the backends only (``show stat``'s type 2): their arrival counters, between two readings
ARRIVALS_COMMAND = "show info;show stat -1 2 -1"
# how a ``show table`` answer starts; a GPC array's counter in an entry's line
TABLE_HEAD = "# table: "
_GPC = re.compile(r"gpc(\d+)=(\d+)")


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
        avg_response_ms=_int(row, "rtime"),
        max_response_ms=_int(row, "rtime_max"),
    )


def stats_command(snapshot: MeshSnapshot | None) -> str:
    """The one runtime API command the agent reads its proxy's counters with: which worker
    answers (``show info``), ``show stat`` for backends and servers, and ``show table`` of
    every cluster of ``snapshot`` (the configuration the proxy runs) that keeps a latency
    histogram (``Cluster.latency_histogram``)."""
    tables = "".join(
        f";show table {backend_name(c.name)}"
        for c in (snapshot.clusters if snapshot is not None else ())
        if c.latency_histogram and c.protocol != "tcp"
    )
    return STATS_COMMAND + tables


def parse_latency(text: str) -> dict[str, tuple[int, ...]]:
    """The latency histograms in ``show table`` answers (``render._latency_histogram``) →
    per mesh cluster its counts per bucket (``ClusterStats.latency``). A table without an
    entry (no response since the worker started) counts zero everywhere; a table whose GPC
    array is not one counter per bucket (not the mesh's) is left out, as are answers about a
    table the proxy does not have ("No such table": a configuration not loaded yet)."""
    out: dict[str, tuple[int, ...]] = {}
    size = len(LATENCY_BOUNDS_MS) + 1
    for section in text.split(TABLE_HEAD)[1:]:
        head, _, rest = section.partition("\n")
        px = head.split(",", 1)[0].strip()
        if not px.startswith(BACKEND_PREFIX):
            continue
        try:
            cluster = str(ClusterName.parse(px[len(BACKEND_PREFIX) :]))
        except ValueError:
            continue  # not a mesh cluster
        entry = next((x for x in rest.split("\n\n", 1)[0].splitlines() if " key=" in x), "")
        gpc: dict[int, int] = {}
        for field_ in entry.split():
            m = _GPC.fullmatch(field_)
            if m is not None:
                gpc[int(m.group(1))] = int(m.group(2))
        if not entry:
            out[cluster] = (0,) * size
        elif sorted(gpc) == list(range(size)):
            out[cluster] = tuple(gpc[i] for i in range(size))
    return out


def parse_stats(text: str) -> dict[str, ClusterStats]:
    """``show stat`` CSV → stats per mesh cluster, keyed by the cluster's name; the latency
    histograms of ``show table`` answers after it (``stats_command``) are read into them."""
    text, sep, tables = text.partition(TABLE_HEAD)
    latency = parse_latency(sep + tables) if sep else {}
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
            # what arrived: HAProxy counts a stream (an HTTP request, a TCP connection) in
            # ``stot`` when it is given to the backend, before a queue or an answer, and
            # ``req_tot`` only when it ends: a saturated service's ``req_tot`` is what it
            # serves, not what is asked of it, which is what the autoscaler follows
            requests=_int(row, "stot"),
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
            max_response_ms=_int(row, "rtime_max"),
            endpoints=tuple(servers.get(cluster, ())),
            latency=latency.get(str(cluster), ()) if mode == "http" else (),
        )
    return out


class InFlight(NamedTuple):
    """What a node's proxy has in flight to some endpoints, as the drain waits for it
    (``docs/mesh.md``, "Draining"): ``requests`` on ``mode http`` servers (HTTP/1.1, HTTP/2
    and gRPC ports: a request, a stream; waited for up to the workload's ``stop_grace``),
    ``connections`` on ``mode tcp`` servers (TCP ports: a connection, busy or idle — HAProxy
    cannot tell an idle pooled client connection from a busy one; waited for briefly)."""

    requests: int = 0
    connections: int = 0

    def plus(self, other: InFlight) -> InFlight:
        return InFlight(self.requests + other.requests, self.connections + other.connections)


def endpoints_in_flight(texts: Iterable[str]) -> dict[str, InFlight]:
    """``show stat`` answers (one per HAProxy worker; servers suffice) -> what is in flight
    per endpoint id (a server ``e_<id>`` of a mesh cluster), summed over the answers; only
    the endpoints with something in flight. A server row's ``mode`` column (HAProxy 2.6 and
    later have it; else its backend row's) tells a TCP endpoint from an HTTP one; a server
    whose mode is not told counts as HTTP (waited for longest)."""
    rows = [(cluster, sv, row) for text in texts for cluster, sv, row in _rows(text)]
    backend_mode = {c: row.get("mode") or "" for c, sv, row in rows if sv == "BACKEND"}
    out: dict[str, InFlight] = {}
    for cluster, sv, row in rows:
        n = _int(row, "scur")
        if n <= 0 or not sv.startswith(SERVER_PREFIX):
            continue
        mode = row.get("mode") or backend_mode.get(cluster, "")
        busy = InFlight(connections=n) if mode == "tcp" else InFlight(requests=n)
        endpoint = sv[len(SERVER_PREFIX) :]
        out[endpoint] = out.get(endpoint, InFlight()).plus(busy)
    return out


def allocation_in_flight(endpoints: Mapping[str, InFlight], allocation: str) -> InFlight:
    """What is in flight on the endpoints of ``allocation`` (ids ``<allocation>-<port>``),
    from ``endpoints_in_flight``."""
    prefix = f"{allocation}-"
    total = InFlight()
    for endpoint, busy in endpoints.items():
        if endpoint.startswith(prefix):
            total = total.plus(busy)
    return total


class Worker(NamedTuple):
    """Which HAProxy worker answered: its pid and when it started (``show info``'s
    Start_time_sec, seconds since the epoch; 0 when the proxy does not say). A pid alone is
    not enough: a restarted proxy, or one after a reboot, may get a pid an earlier worker had."""

    pid: int
    started: int = 0

    def same(self, other: Worker) -> bool:
        """Whether ``other`` is this worker: the same pid, and the same start unless one of
        them is not known (then a counter that went down still tells a new worker)."""
        return self.pid == other.pid and (
            self.started == other.started or not (self.started and other.started)
        )


def split_info(text: str) -> tuple[Worker | None, str]:
    """``show info;show stat ...``'s answer -> (the worker that answered, the rest: ``show
    stat``'s CSV). ``(None, text)`` when it does not start with ``show info``'s block; None
    for the worker when the block names no pid."""
    head, sep, rest = text.partition("\n\n")
    if not sep or not head.startswith("Name:"):
        return None, text
    info: dict[str, str] = {}
    for line in head.splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    pid, started = info.get("Pid", ""), info.get("Start_time_sec", "")
    if not pid.isdigit():
        return None, rest
    return Worker(int(pid), int(started) if started.isdigit() else 0), rest


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
LATENCY = "latency:"  # a latency bucket's counter ("latency:<index>")
Counts = dict[str, int]


def counts(s: ClusterStats) -> Counts:
    """The counters of one cluster's stats, by name."""
    out = {k: int(getattr(s, k)) for k in COUNTERS}
    out.update({ENDPOINT + e.id: e.served for e in s.endpoints})
    out.update({f"{LATENCY}{i}": n for i, n in enumerate(s.latency)})
    return out


def plus(s: ClusterStats, base: Mapping[str, int]) -> ClusterStats:
    """``s`` with ``base`` added to its counters."""
    if not base:
        return s
    endpoints = tuple(
        replace(e, served=e.served + base.get(ENDPOINT + e.id, 0)) for e in s.endpoints
    )
    grown = {k: int(getattr(s, k)) + base.get(k, 0) for k in COUNTERS}
    latency = tuple(n + base.get(f"{LATENCY}{i}", 0) for i, n in enumerate(s.latency))
    return replace(s, endpoints=endpoints, latency=latency, **grown)  # type: ignore[arg-type]


def zero(s: ClusterStats) -> ClusterStats:
    """``s`` with its counters at zero (its gauges kept)."""
    endpoints = tuple(replace(e, served=0) for e in s.endpoints)
    latency = (0,) * len(s.latency)
    return replace(s, endpoints=endpoints, latency=latency, **dict.fromkeys(COUNTERS, 0))  # type: ignore[arg-type]


@dataclass
class Totals:
    """Per-cluster counters that never go back across the proxy's reloads and restarts
    (pure; the agent keeps one and saves it when its base moves, ``to_data``/``from_data``).

    ``worker``: the worker whose counts are not in ``base`` yet (None before the first
    reading); ``last``: its counts at the last reading; ``base``: what earlier workers had
    counted, for the clusters and endpoints the newest worker serves."""

    worker: Worker | None = None
    base: dict[str, Counts] = field(default_factory=dict)
    last: dict[str, Counts] = field(default_factory=dict)
    # workers whose counts joined the base: a late reading of one (sent before a reload,
    # answered after a newer worker's) is not counted again
    retired: list[Worker] = field(default_factory=list)

    def add(
        self, worker: Worker | None, raw: Mapping[str, ClusterStats]
    ) -> tuple[dict[str, ClusterStats], bool]:
        """A reading of ``worker`` (None when unknown) -> the totals, and whether the base
        moved (another worker answered, or a cluster's counter went down: what the previous
        worker counted joined the base; to be saved). An endpoint's counter that went down
        alone (its server deleted and added again in the same worker), or a latency bucket's
        (its 32-bit counter wrapped), adds just that counter's count to the base."""
        if worker and worker in self.retired:  # late: its counts are in the base already
            late = {
                n: plus(zero(s), _sum(self.base.get(n, {}), self.last.get(n, {})))
                for n, s in raw.items()
            }
            return late, False
        now = {name: counts(s) for name, s in raw.items()}
        fell = {
            (name, k)
            for name, c in now.items()
            for k, v in c.items()
            if v < self.last.get(name, {}).get(k, 0)
        }
        other = bool(worker and self.worker and not worker.same(self.worker))
        # an endpoint's counter, or a latency bucket's (a 32-bit GPC that wrapped), going
        # down alone moves only itself; any other counter going down means another worker
        moved = other or any(not k.startswith((ENDPOINT, LATENCY)) for _, k in fell)
        if moved:
            self.base = _kept(
                {name: _sum(self.base.get(name, {}), last) for name, last in self.last.items()}
                | {name: b for name, b in self.base.items() if name not in self.last},
                now,
            )
            if self.worker and other:  # (one that shares the new one's name is not told apart)
                self.retired = [*self.retired[-15:], self.worker]
        else:  # the same worker; a server deleted and added again counts from zero
            for name, k in fell:
                b = self.base.setdefault(name, {})
                b[k] = b.get(k, 0) + self.last[name][k]
        self.worker = worker or self.worker
        self.last = now
        totals = {name: plus(s, self.base.get(name, {})) for name, s in raw.items()}
        return totals, moved or bool(fell)

    def to_data(self) -> dict[str, object]:
        return {
            "worker": list(self.worker) if self.worker else None,
            "base": self.base,
            "last": self.last,
            "retired": [list(w) for w in self.retired],
        }

    @classmethod
    def from_data(cls, data: object) -> Totals:
        """From ``to_data``'s form (or an older one that knew workers by pid alone: the
        pid is kept, without a start, and retired pids are forgotten: they may be anyone's
        now); an empty ``Totals`` from anything else."""
        if not isinstance(data, dict):
            return cls()
        try:
            retired = [_worker(w) for w in data.get("retired", [])]
            return cls(
                worker=_worker(data.get("worker")),
                base=_table(data.get("base", {})),
                last=_table(data.get("last", {})),
                retired=[w for w in retired if w and w.started],
            )
        except (TypeError, ValueError, AttributeError):
            return cls()


def _worker(data: object) -> Worker | None:
    """A worker from ``to_data``'s form: ``[pid, started]``, a bare pid (older files), or
    None / 0 (none yet)."""
    if data is None or data == 0:
        return None
    if isinstance(data, bool):
        raise TypeError("not a worker")
    if isinstance(data, int):
        return Worker(data)
    if isinstance(data, list) and len(data) == 2:
        return Worker(int(data[0]), int(data[1]))
    raise TypeError("not a worker")


def _kept(base: dict[str, Counts], now: Mapping[str, Counts]) -> dict[str, Counts]:
    """``base`` without the endpoints the newest reading (``now``) does not serve: an
    endpoint that is gone never comes back (its id names one allocation), and keeping them
    would grow the base with every allocation the node ever served."""
    return {
        name: {k: v for k, v in b.items() if not k.startswith(ENDPOINT) or k in now.get(name, {})}
        for name, b in base.items()
    }


def _sum(a: Mapping[str, int], b: Mapping[str, int]) -> Counts:
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}


def _table(data: object) -> dict[str, Counts]:
    if not isinstance(data, dict):
        raise TypeError("not a table of counters")
    return {str(name): {str(k): int(v) for k, v in c.items()} for name, c in data.items()}
