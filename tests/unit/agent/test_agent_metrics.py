"""The agent's ``/metrics``: what it exports (pure) and a real scrape of its server over
loopback, parsed as Prometheus reads it."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from elastin.agent.agent import Agent, AgentConfig
from elastin.agent.metrics import AgentView, MetricsServer, ProxyView
from elastin.mesh.model import MeshSnapshot
from elastin.mesh.model.traffic import ClusterStats, EndpointStats
from elastin.testing.fake_driver import FakeDriver

API = ClusterStats(
    "shop",
    "api",
    "http",
    "http",
    requests=100,
    responses_5xx=3,
    response_errors=1,
    connect_errors=2,
    retries=4,
    active=2,
    avg_response_ms=7,
    endpoints=(EndpointStats("a1-http", "UP", 2, 60), EndpointStats("a2-http", "MAINT", 0, 40)),
)
DB = ClusterStats("shop", "db", "pg", "tcp", requests=12)
VIEW = AgentView(
    {"running": 2, "failed": 1},
    restarts=3,
    proxy=ProxyView(
        up=True,
        version=9,
        reloads=2,
        starts=1,
        runtime_commands=17,
        exporter_port=8405,
        traffic={"shop.api.http": API, "shop.db.pg": DB},
    ),
    disk={"log_dropped": 4096, "collected": 2},
)

HELP = {
    "elastin_agent_instances": "Instances this agent runs, by status.",
    "elastin_agent_restarts": "Restarts of this agent's instances.",
    "elastin_agent_log_dropped_bytes": (
        "Log bytes of instances truncated without a copy (no room on the data disk)."
    ),
    "elastin_agent_alloc_dirs_collected": (
        "Allocation directories removed by the agent's garbage collection."
    ),
    "elastin_agent_mesh_up": "Whether this node's HAProxy runs.",
    "elastin_agent_mesh_version": "The mesh snapshot version the proxy serves.",
    "elastin_agent_mesh_reloads": "Hitless reloads (structural changes).",
    "elastin_agent_mesh_starts": "Proxy starts (first, and after it died).",
    "elastin_agent_mesh_runtime_commands": "Runtime API commands (no reload).",
    "elastin_agent_mesh_exporter_port": "HAProxy's own Prometheus exporter port.",
    "elastin_mesh_requests": (
        "Requests (TCP: connections) that reached the service's mesh backend, answered or not."
    ),
    "elastin_mesh_errors": "5xx answers and broken responses from the service.",
    "elastin_mesh_connect_errors": "Failed connections to the service's endpoints.",
    "elastin_mesh_retries": "Requests the mesh retried.",
    "elastin_mesh_in_flight": "Requests in flight to the service.",
    "elastin_mesh_response_ms": "Average response time over the last 1,024 requests.",
    "elastin_mesh_endpoints_up": "Endpoints of the service the proxy considers up.",
}
COUNTERS = {
    "elastin_agent_restarts",
    "elastin_agent_log_dropped_bytes",
    "elastin_agent_alloc_dirs_collected",
    "elastin_agent_mesh_reloads",
    "elastin_agent_mesh_starts",
    "elastin_agent_mesh_runtime_commands",
    "elastin_mesh_requests",
    "elastin_mesh_errors",
    "elastin_mesh_connect_errors",
    "elastin_mesh_retries",
}


def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.headers["Content-Type"], r.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert isinstance(s, Sample)
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def label(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


async def test_a_real_scrape_has_every_name_help_type_label_and_value() -> None:
    server = MetricsServer(lambda: VIEW)
    await server.start()
    try:
        assert server.address == f"127.0.0.1:{server.port}" and server.port > 0
        ctype, text = await asyncio.to_thread(scrape, f"http://{server.address}/metrics")
    finally:
        await server.close()
    assert ctype.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {n: f.documentation for n, f in families.items()} == HELP
    assert {n for n, f in families.items() if f.type == "counter"} == COUNTERS
    assert all(f.type == "gauge" for n, f in families.items() if n not in COUNTERS)
    got = samples(text)
    shop_api, shop_db = (
        label(app="shop", service="api", port="http"),
        label(app="shop", service="db", port="pg"),
    )
    assert got == {
        ("elastin_agent_instances", label(status="failed")): 1,
        ("elastin_agent_instances", label(status="running")): 2,
        ("elastin_agent_restarts_total", label()): 3,
        ("elastin_agent_log_dropped_bytes_total", label()): 4096,
        ("elastin_agent_alloc_dirs_collected_total", label()): 2,
        ("elastin_agent_mesh_up", label()): 1,
        ("elastin_agent_mesh_version", label()): 9,
        ("elastin_agent_mesh_reloads_total", label()): 2,
        ("elastin_agent_mesh_starts_total", label()): 1,
        ("elastin_agent_mesh_runtime_commands_total", label()): 17,
        ("elastin_agent_mesh_exporter_port", label()): 8405,
        ("elastin_mesh_requests_total", shop_api): 100,
        ("elastin_mesh_requests_total", shop_db): 12,
        ("elastin_mesh_errors_total", shop_api): 4,
        ("elastin_mesh_errors_total", shop_db): 0,
        ("elastin_mesh_connect_errors_total", shop_api): 2,
        ("elastin_mesh_connect_errors_total", shop_db): 0,
        ("elastin_mesh_retries_total", shop_api): 4,
        ("elastin_mesh_retries_total", shop_db): 0,
        ("elastin_mesh_in_flight", shop_api): 2,
        ("elastin_mesh_in_flight", shop_db): 0,
        ("elastin_mesh_response_ms", shop_api): 7,
        ("elastin_mesh_response_ms", shop_db): 0,
        ("elastin_mesh_endpoints_up", shop_api): 1,
        ("elastin_mesh_endpoints_up", shop_db): 0,
    }
    # the text keeps the families' HELP and TYPE lines by their exported names
    assert "# TYPE elastin_mesh_requests_total counter" in text
    assert "# TYPE elastin_agent_mesh_up gauge" in text


async def test_without_a_mesh_only_the_instances_and_a_closed_server_refuses() -> None:
    views = [AgentView({}, 0)]
    server = MetricsServer(lambda: views[-1], port=0)
    await server.start()
    url = f"http://{server.address}/metrics"
    try:
        _, text = await asyncio.to_thread(scrape, url)
        assert samples(text) == {
            ("elastin_agent_restarts_total", label()): 0,
            ("elastin_agent_log_dropped_bytes_total", label()): 0,
            ("elastin_agent_alloc_dirs_collected_total", label()): 0,
        }
        assert {f.name for f in text_string_to_metric_families(text)} == {
            "elastin_agent_instances",
            "elastin_agent_restarts",
            "elastin_agent_log_dropped_bytes",
            "elastin_agent_alloc_dirs_collected",
        }
        views.append(AgentView({"running": 1}, 2))  # every scrape asks again
        _, text = await asyncio.to_thread(scrape, url)
        assert samples(text)[("elastin_agent_instances", label(status="running"))] == 1
    finally:
        await server.close()
    await server.close()  # twice is fine
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(scrape, url)


async def test_a_view_that_fails_is_an_error_answer_not_a_dead_agent() -> None:
    def broken() -> AgentView:
        raise RuntimeError("bug")

    server = MetricsServer(broken)
    await server.start()
    try:
        with pytest.raises(urllib.error.HTTPError):
            await asyncio.to_thread(scrape, f"http://{server.address}/metrics")
    finally:
        await server.close()


def test_the_agent_view_reads_its_runners_and_proxy(tmp_path: Path) -> None:
    cfg = AgentConfig(data_dir=tmp_path, server_url="http://127.0.0.1:9", token="t", mesh=False)
    agent = Agent(cfg, {"task": FakeDriver()})
    disk = {"log_dropped": 0, "collected": 0}
    assert agent.metrics_view() == AgentView({}, 0, disk=disk)
    agent.runners = {  # type: ignore[dict-item]
        "a": SimpleNamespace(state=SimpleNamespace(status="running", restarts=2)),
        "b": SimpleNamespace(state=SimpleNamespace(status="running", restarts=1)),
    }
    proxy = SimpleNamespace(alive=lambda: False, reloads=3, starts=4)
    agent.mesh = SimpleNamespace(  # type: ignore[assignment]
        proxy=proxy,
        current=MeshSnapshot(5),
        runtime_commands=6,
        exporter_port=7,
        stats=lambda: {"shop.db.pg": DB},
    )
    assert agent.metrics_view() == AgentView(
        {"running": 2}, 3, ProxyView(False, 5, 3, 4, 6, 7, {"shop.db.pg": DB}), disk
    )
