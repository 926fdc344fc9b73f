"""The metrics routes over an in-memory store (no sockets): an agent's one-second report into
the server's memory (bounded, checked, only from a node it heard a heartbeat from) and one
service's windows read back, per replica and in total."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import api_client

from elastin.model.cluster import Node
from elastin.model.codec import to_data
from elastin.model.resources import Resources
from elastin.server.api.users import ServiceMetrics
from elastin.server.cluster import Cluster
from elastin.server.windows import MAX_REPORT_BYTES
from elastin.store.memory import MemoryStore
from elastin.testing import FakeClock

SPEC = """
app: shop
services:
  web:
    command: python3 -m http.server
    resources: {cpu: 500m, memory: 128Mi}
"""


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Cluster]]:
    cluster = await Cluster.open(MemoryStore(), seed=1)
    async with api_client(cluster, tmp_path) as client:
        yield client, cluster


T0 = 1_000_000.0  # the windows' fake clock


def body(at: float, requests: int, cpu: float = 250.0, a1: str = "a1") -> dict[str, Any]:
    return {
        "at": at,
        "interval": 1.0,
        "instances": {
            a1: {
                "app": "shop",
                "workload": "web",
                "cpu": cpu,
                "memory": 64 << 20,
                "cpu_request": 500,
                "memory_request": 128 << 20,
                "ready": True,
            }
        },
        "ports": {
            "shop.web.http": {
                "mode": "http",
                "requests": requests,
                "errors": 0,
                "active": 3,  # the backend's sessions: 2 on the endpoint, 1 queued
                "queued": 1,
                "avg_ms": 5,
                "max_ms": 12,
                "endpoints": {a1: {"requests": requests, "active": 2, "avg_ms": 5, "max_ms": 12}},
            }
        },
    }


async def registered(client: httpx.AsyncClient, cluster: Cluster, nodes: int = 1) -> list[str]:
    """Nodes n1.. registered, shop applied and placed: the ids of its web allocations."""
    for k in range(1, nodes + 1):
        n = Node(id=f"n{k}", name=f"n{k}", capacity=Resources(2000, 4 << 30, 10 << 30))
        assert (await client.post("/v1/nodes", json={"node": to_data(n)})).status_code == 200
    assert (await client.post("/v1/apps", json={"spec": SPEC})).status_code == 200
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    return [a.id for a in allocs if a.workload == "web"]


async def test_a_report_is_kept_and_read_back_per_replica_and_in_total(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, cluster = api
    clock = FakeClock(T0)
    cluster.telemetry.windows.clock = clock  # the windows' seconds, on a fake clock
    (a1,) = await registered(client, cluster)
    r = await client.post("/v1/nodes/n1/metrics", json=body(T0, 10, a1=a1))
    assert r.status_code == 404 and "no heartbeat" in r.json()["message"]  # not heard yet
    assert (await client.post("/v1/nodes/n1/heartbeat", json={})).status_code == 200
    r = await client.post("/v1/nodes/n1/metrics", json=body(T0, 10, a1=a1))
    assert r.status_code == 200 and r.json() == {"node": "n1", "instances": 1, "ports": 1}
    clock.advance(1)
    r = await client.post("/v1/nodes/n1/metrics", json=body(T0 + 1, 60, a1=a1))
    assert r.status_code == 200
    r = await client.get("/v1/metrics/services/shop/web", params={"seconds": 5})
    assert r.status_code == 200
    data = ServiceMetrics.model_validate(r.json()).model_dump()
    total = {k: v["current"] for k, v in data["total"].items()}
    assert total["requests_per_s"] == 50.0 and total["in_flight"] == 3.0
    assert total["cpu_utilization"] == 0.5 and total["memory_utilization"] == 0.5
    assert total["avg_response_ms"] == 5.0 and total["max_response_ms"] == 12.0
    assert total["p99_response_ms"] is None
    assert len(data["times"]) == 5 and data["total"]["requests_per_s"]["series"][-2:] == [
        None,
        50.0,
    ]
    assert data["replicas"][a1]["requests_per_s"]["current"] == 50.0
    assert data["replicas"][a1]["node"] == "n1"
    assert data["ports"]["http"]["replicas"][a1]["in_flight"]["current"] == 2.0
    cluster.telemetry.forget("n1")  # marked down: its numbers go with it
    r = await client.get("/v1/metrics/services/shop/web")
    assert r.json()["total"]["replicas"]["current"] == 0


async def test_a_bad_report_is_refused_with_what_is_wrong(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, cluster = api
    await registered(client, cluster)
    await client.post("/v1/nodes/n1/heartbeat", json={})
    bad = body(T0, 10)
    bad["ports"]["shop.web.http"]["requests"] = -1
    r = await client.post("/v1/nodes/n1/metrics", json=bad)
    assert r.status_code == 422
    assert "ports['shop.web.http'].requests must be a number >= 0" in r.json()["message"]
    r = await client.post("/v1/nodes/n1/metrics", content=b"{not json")
    assert r.status_code == 422 and "malformed" in r.json()["message"]
    big = body(T0, 10)
    big["pad"] = "x" * MAX_REPORT_BYTES
    r = await client.post("/v1/nodes/n1/metrics", json=big)
    assert r.status_code == 413
    assert f"the most is {MAX_REPORT_BYTES}" in r.json()["message"] and r.json()["hint"]
    r = await client.get("/v1/metrics/services/shop/nope")
    assert r.status_code == 404 and "nope" in r.json()["message"]
    r = await client.get("/v1/metrics/services/shop/web", params={"seconds": 301})
    assert r.status_code == 422  # five minutes at most


async def test_only_allocations_the_store_has_on_that_node_are_taken(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, cluster = api
    clock = FakeClock(T0)
    cluster.telemetry.windows.clock = clock
    (a1,) = await registered(client, cluster, nodes=2)
    (placed,) = [a for a in (await cluster.views.all_allocations())[0] if a.id == a1]
    other = "n2" if placed.node_id == "n1" else "n1"
    for n in ("n1", "n2"):
        assert (await client.post(f"/v1/nodes/{n}/heartbeat", json={})).status_code == 200
    lying = body(T0, 10, a1=a1)
    lying["instances"][a1] |= {"app": "other", "workload": "thing"}  # the store knows better
    lying["instances"]["phantom"] = dict(lying["instances"][a1])  # no such allocation
    lying["ports"]["shop.web.http"]["endpoints"]["phantom"] = {"requests": 5}
    r = await client.post(f"/v1/nodes/{placed.node_id}/metrics", json=lying)
    assert r.status_code == 200 and r.json()["instances"] == 1
    # another node claiming the same allocation: not its own, left out
    claim = body(T0, 10, cpu=999.0, a1=a1)
    r = await client.post(f"/v1/nodes/{other}/metrics", json=claim)
    assert r.status_code == 200 and r.json()["instances"] == 0
    data = (await client.get("/v1/metrics/services/shop/web", params={"seconds": 1})).json()
    assert set(data["replicas"]) == {a1}  # no phantom, under the allocation's own service
    assert data["replicas"][a1]["node"] == placed.node_id
    assert data["replicas"][a1]["cpu"]["current"] == 250.0  # the other node's is not taken
    assert set(data["ports"]["http"]["replicas"]) == {a1}
    assert (await client.get("/v1/metrics/services/other/thing")).status_code == 404
    assert cluster.telemetry.windows.service("other", "thing", 1)["replicas"] == {}


async def test_a_report_far_from_the_servers_clock_is_refused_saying_so(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, cluster = api
    cluster.telemetry.windows.clock = FakeClock(T0)
    (a1,) = await registered(client, cluster)
    await client.post("/v1/nodes/n1/heartbeat", json={})
    r = await client.post("/v1/nodes/n1/metrics", json=body(1e12, 10, a1=a1))
    assert r.status_code == 422
    assert "from the server's" in r.json()["message"] and "NTP" in r.json()["hint"]
    r = await client.post("/v1/nodes/n1/metrics", json=body(T0, 10, a1=a1))
    assert r.status_code == 200  # the next one in time is taken: nothing blocks it
