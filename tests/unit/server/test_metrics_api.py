"""The metrics routes over an in-memory store (no sockets): an agent's one-second report into
the server's memory (bounded, checked, only from a node it heard a heartbeat from) and one
service's windows read back, per replica and in total."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from elastin.model.cluster import Node
from elastin.model.codec import to_data
from elastin.model.resources import Resources
from elastin.server.api import create_api
from elastin.server.api.users import ServiceMetrics
from elastin.server.auth import ensure_token
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
    token = ensure_token(tmp_path)
    app = create_api(cluster, token, tmp_path)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client, cluster


def body(at: float, requests: int, cpu: float = 250.0) -> dict[str, Any]:
    return {
        "at": at,
        "interval": 1.0,
        "instances": {
            "a1": {
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
                "active": 2,
                "queued": 1,
                "avg_ms": 5,
                "max_ms": 12,
                "endpoints": {"a1": {"requests": requests, "active": 2, "avg_ms": 5, "max_ms": 12}},
            }
        },
    }


async def registered(client: httpx.AsyncClient, cluster: Cluster) -> None:
    n = Node(id="n1", name="n1", capacity=Resources(2000, 4 << 30, 10 << 30))
    assert (await client.post("/v1/nodes", json={"node": to_data(n)})).status_code == 200
    assert (await client.post("/v1/apps", json={"spec": SPEC})).status_code == 200


async def test_a_report_is_kept_and_read_back_per_replica_and_in_total(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, cluster = api
    clock = FakeClock(1_000_000.0)
    cluster.telemetry.windows.clock = clock  # the windows' seconds, on a fake clock
    await registered(client, cluster)
    r = await client.post("/v1/nodes/n1/metrics", json=body(100.0, 10))
    assert r.status_code == 404 and "no heartbeat" in r.json()["message"]  # not heard yet
    assert (await client.post("/v1/nodes/n1/heartbeat", json={})).status_code == 200
    r = await client.post("/v1/nodes/n1/metrics", json=body(100.0, 10))
    assert r.status_code == 200 and r.json() == {"node": "n1", "instances": 1, "ports": 1}
    clock.advance(1)
    assert (await client.post("/v1/nodes/n1/metrics", json=body(101.0, 60))).status_code == 200
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
    assert data["replicas"]["a1"]["requests_per_s"]["current"] == 50.0
    assert data["replicas"]["a1"]["node"] == "n1"
    assert data["ports"]["http"]["replicas"]["a1"]["in_flight"]["current"] == 2.0
    cluster.telemetry.forget("n1")  # marked down: its numbers go with it
    r = await client.get("/v1/metrics/services/shop/web")
    assert r.json()["total"]["replicas"]["current"] == 0


async def test_a_bad_report_is_refused_with_what_is_wrong(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, cluster = api
    await registered(client, cluster)
    await client.post("/v1/nodes/n1/heartbeat", json={})
    bad = body(100.0, 10)
    bad["ports"]["shop.web.http"]["requests"] = -1
    r = await client.post("/v1/nodes/n1/metrics", json=bad)
    assert r.status_code == 422
    assert "ports['shop.web.http'].requests must be a number >= 0" in r.json()["message"]
    r = await client.post("/v1/nodes/n1/metrics", content=b"{not json")
    assert r.status_code == 422 and "malformed" in r.json()["message"]
    big = body(100.0, 10)
    big["pad"] = "x" * MAX_REPORT_BYTES
    r = await client.post("/v1/nodes/n1/metrics", json=big)
    assert r.status_code == 413
    assert f"the most is {MAX_REPORT_BYTES}" in r.json()["message"] and r.json()["hint"]
    r = await client.get("/v1/metrics/services/shop/nope")
    assert r.status_code == 404 and "nope" in r.json()["message"]
    r = await client.get("/v1/metrics/services/shop/web", params={"seconds": 301})
    assert r.status_code == 422  # five minutes at most
