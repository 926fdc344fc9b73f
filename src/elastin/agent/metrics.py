"""The agent's own ``/metrics`` endpoint, served by ``prometheus_client`` on loopback.

``agent_families`` is pure: an ``AgentView`` (what the agent runs, and what its node's proxy
did and counted) in, Prometheus metric families out. ``MetricsServer`` is the thin I/O
around it: a private ``CollectorRegistry`` whose one collector asks the agent for a fresh
view on every scrape, served by ``prometheus_client.start_http_server`` (a thread of its
own; the view is read there, so that asking the proxy for its counters never blocks the
agent's event loop). The agent publishes where it listens as its node's ``agent.metrics``
attribute. What it exports is listed in ``docs/mesh.md`` ("Metrics"): ``elastin_agent_*``
here and the mesh's traffic per service port (``elastin_mesh_*``, ``mesh.model.traffic``)
labelled app, service and port.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from elastin.mesh.model.traffic import ClusterStats, traffic_samples
from elastin.metrics import MetricKind, family


@dataclass(frozen=True)
class ProxyView:
    """This node's HAProxy as the agent's mesh manager knows it."""

    up: bool
    version: int  # the mesh snapshot version it serves (0: none yet)
    reloads: int
    starts: int
    runtime_commands: int
    exporter_port: int  # HAProxy's own Prometheus exporter
    traffic: Mapping[str, ClusterStats] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentView:
    """What ``/metrics`` reports at one moment."""

    instances: Mapping[str, int]  # instances this agent runs, by status
    restarts: int
    proxy: ProxyView | None = None  # None: no mesh on this node
    # the agent's care of its data disk: "log_dropped" (log bytes truncated without a copy:
    # no room for one), "collected" (allocation directories garbage-collected)
    disk: Mapping[str, int] = field(default_factory=dict)


def _single(name: str, help_: str, kind: MetricKind, value: float) -> Metric:
    return family(name, help_, kind, [({}, value)])


def agent_families(view: AgentView) -> list[Metric]:
    out = [
        family(
            "elastin_agent_instances",
            "Instances this agent runs, by status.",
            "gauge",
            (({"status": s}, n) for s, n in sorted(view.instances.items())),
            labels=("status",),
        ),
        _single(
            "elastin_agent_restarts_total",
            "Restarts of this agent's instances.",
            "counter",
            view.restarts,
        ),
    ]
    out += [
        _single(
            "elastin_agent_log_dropped_bytes_total",
            "Log bytes of instances truncated without a copy (no room on the data disk).",
            "counter",
            view.disk.get("log_dropped", 0),
        ),
        _single(
            "elastin_agent_alloc_dirs_collected_total",
            "Allocation directories removed by the agent's garbage collection.",
            "counter",
            view.disk.get("collected", 0),
        ),
    ]
    p = view.proxy
    if p is None:
        return out
    out += [
        _single("elastin_agent_mesh_up", "Whether this node's HAProxy runs.", "gauge", float(p.up)),
        _single(
            "elastin_agent_mesh_version",
            "The mesh snapshot version the proxy serves.",
            "gauge",
            p.version,
        ),
        _single(
            "elastin_agent_mesh_reloads_total",
            "Hitless reloads (structural changes).",
            "counter",
            p.reloads,
        ),
        _single(
            "elastin_agent_mesh_starts_total",
            "Proxy starts (first, and after it died).",
            "counter",
            p.starts,
        ),
        _single(
            "elastin_agent_mesh_runtime_commands_total",
            "Runtime API commands (no reload).",
            "counter",
            p.runtime_commands,
        ),
        _single(
            "elastin_agent_mesh_exporter_port",
            "HAProxy's own Prometheus exporter port.",
            "gauge",
            p.exporter_port,
        ),
    ]
    for metric, samples in traffic_samples([(p.traffic, {})]):
        out.append(
            family(metric.name, metric.help, metric.kind, samples, ("app", "service", "port"))
        )
    return out


class _AgentCollector(Collector):
    def __init__(self, view: Callable[[], AgentView]) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        yield from agent_families(self.view())


class MetricsServer:
    """``GET /metrics`` (any path but ``/favicon.ico``, as prometheus_client serves it) on
    ``host:port``; ``view`` is called in the server's thread on every scrape."""

    def __init__(
        self, view: Callable[[], AgentView], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.host = host
        self.want_port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_AgentCollector(view))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.server_port)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        self._server, self._thread = start_http_server(
            self.want_port, addr=self.host, registry=self.registry
        )

    async def close(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        # shutdown() waits for serve_forever's loop (polls every 0.5 s): not on the loop
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        await asyncio.to_thread(thread.join, 5.0)
        self._thread = None
