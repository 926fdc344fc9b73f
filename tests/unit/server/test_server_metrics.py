"""The server's ``/v1/metrics`` body, parsed as Prometheus reads it (pure)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from server_support import api_client

from elastin.mesh.model.traffic import ClusterStats, EndpointStats
from elastin.model.cluster import Allocation, Usage
from elastin.server.cluster import Cluster
from elastin.server.metrics import CONTENT_TYPE, render_metrics
from elastin.server.repo import Repo
from elastin.store.memory import MemoryStore

ALLOCS = [
    Allocation(id="a0", app="shop", workload="api", index=0, status="running"),
    Allocation(id="a1", app="shop", workload="api", index=1, status="running"),
    Allocation(id="a2", app="shop", workload="api", index=2, status="failed"),
    Allocation(id="w0", app="shop", workload="web", index=0, status="pending"),
]
USAGE = {
    "a0": Usage(cpu=12.5, memory=1 << 20),
    "a2": Usage(cpu=99.0, memory=5),  # terminal: not reported
    "gone": Usage(cpu=1.0),  # no allocation: not reported
}
API = ClusterStats(
    "shop",
    "api",
    "http",
    "http",
    requests=100,
    responses_5xx=3,
    response_errors=1,
    endpoints=(EndpointStats("a0-http", "UP", 0, 10), EndpointStats("a1-http", "UP 1/2", 0, 9)),
)


def parse(body: bytes) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, frozenset], float]]:
    families, samples = {}, {}
    for fam in text_string_to_metric_families(body.decode()):
        families[fam.name] = (fam.type, fam.documentation)
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def test_every_family_with_its_help_type_labels_and_values() -> None:
    mesh = {"n2": {"shop.api.http": API}, "n1": {"shop.api.http": API}}
    families, samples = parse(render_metrics(42, ALLOCS, USAGE, mesh))
    assert families == {
        "elastin_store_revision": ("gauge", "Current revision of the state store."),
        "elastin_allocations": ("gauge", "Allocations by status."),
        "elastin_allocation_cpu_millicores": ("gauge", "Measured cpu use."),
        "elastin_allocation_memory_bytes": ("gauge", "Measured memory use (working set)."),
        "elastin_mesh_requests": (
            "counter",
            "Requests (TCP: connections) that reached the service's mesh backend, answered or not.",
        ),
        "elastin_mesh_errors": ("counter", "5xx answers and broken responses from the service."),
        "elastin_mesh_connect_errors": (
            "counter",
            "Failed connections to the service's endpoints.",
        ),
        "elastin_mesh_retries": ("counter", "Requests the mesh retried."),
        "elastin_mesh_in_flight": ("gauge", "Requests in flight to the service."),
        "elastin_mesh_response_ms": (
            "gauge",
            "Average response time over the last 1,024 requests.",
        ),
        "elastin_mesh_endpoints_up": ("gauge", "Endpoints of the service the proxy considers up."),
    }
    api0 = frozenset({"app": "shop", "workload": "api", "index": "0"}.items())
    assert samples[("elastin_store_revision", frozenset())] == 42
    assert {k: v for k, v in samples.items() if k[0] == "elastin_allocations"} == {
        ("elastin_allocations", frozenset({("status", "running")})): 2,
        ("elastin_allocations", frozenset({("status", "failed")})): 1,
        ("elastin_allocations", frozenset({("status", "pending")})): 1,
    }
    assert {k: v for k, v in samples.items() if k[0].startswith("elastin_allocation_")} == {
        ("elastin_allocation_cpu_millicores", api0): 12.5,
        ("elastin_allocation_memory_bytes", api0): 1 << 20,
    }
    for node in ("n1", "n2"):
        labels = frozenset({"app": "shop", "service": "api", "port": "http", "node": node}.items())
        assert samples[("elastin_mesh_requests_total", labels)] == 100
        assert samples[("elastin_mesh_errors_total", labels)] == 4
        assert samples[("elastin_mesh_endpoints_up", labels)] == 2
        assert samples[("elastin_mesh_in_flight", labels)] == 0
    assert sum(1 for k in samples if k[0].startswith("elastin_mesh_")) == 7 * 2


def test_an_empty_cluster_still_declares_its_families() -> None:
    body = render_metrics(0, [], {}, {})
    families, samples = parse(body)
    assert len(families) == 11
    assert samples == {("elastin_store_revision", frozenset()): 0}
    assert b"# TYPE elastin_mesh_requests_total counter\n" in body
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


async def test_the_api_serves_the_same_metrics(tmp_path: Path) -> None:
    store = MemoryStore()
    await Repo(store).commit(allocs=ALLOCS)
    cluster = await Cluster.open(store, seed=1)
    cluster.telemetry.record("n1", USAGE, None, {"shop.api.http": API})
    async with api_client(cluster, tmp_path) as client:
        r = await client.get("/v1/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    allocs, rev = await cluster.views.all_allocations()
    t = cluster.telemetry
    expected = render_metrics(rev, allocs, t.usage(), t.mesh())
    assert parse(r.content) == parse(expected)
