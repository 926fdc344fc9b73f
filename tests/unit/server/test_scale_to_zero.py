"""Scale to zero in the server (issue #13, item 3), on an in-memory store and a fake clock:
the autoscaler loop measures idleness from the one-second windows (``last_active``) and
passes it to ``decide``, so a ``min: 0`` service's last replica goes after ``idle_after``
without a request; an agent's wake (``POST /v1/nodes/{id}/wake``) records the requests the
mesh holds and wakes the loop at once, which brings one replica back without waiting for the
next interval."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import api_client, events_of, replicas, start_placed

from elastin.model.cluster import Node
from elastin.model.resources import Resources
from elastin.server.api import create_api
from elastin.server.autoscaler import HELD_TTL, last_active
from elastin.server.cluster import Cluster
from elastin.server.windows import parse_report
from elastin.store.memory import MemoryStore
from elastin.testing import FakeClock

SPEC = """
app: shop
services:
  api:
    command: python3 -m http.server
    ports: {http: 0}
    resources: {cpu: 200m, memory: 64Mi}
    autoscale:
      min: 0
      max: 3
      metrics: [{inflight: 4}]
      idle_after: 2s
"""


def series(rates: list[float | None], in_flight: list[float | None]) -> dict[str, Any]:
    return {
        "total": {
            "requests_per_s": {"current": rates[-1], "series": rates},
            "in_flight": {"current": in_flight[-1], "series": in_flight},
        }
    }


def test_last_active_is_measured_never_assumed() -> None:
    quiet = series([0.0, 0.0], [0.0, 0.0])
    assert last_active(None, quiet, 100.0) == 100.0  # the first look: from now
    assert last_active(90.0, quiet, 100.0) == 90.0  # quiet since
    assert last_active(90.0, series([0.0, 3.0], [0.0, 0.0]), 100.0) == 100.0  # a request
    assert last_active(90.0, series([0.0, 0.0], [0.0, 1.0]), 100.0) == 100.0  # one in flight
    # a second without a measurement (no report, no rate yet) is not idle
    assert last_active(90.0, series([None, 0.0], [None, 0.0]), 100.0) == 100.0
    assert last_active(90.0, {}, 100.0) == 100.0


@pytest.fixture
async def cluster() -> Cluster:
    return await Cluster.open(MemoryStore(), seed=1, clock=FakeClock(1000.0))


def report(cluster: Cluster, ids: list[str], requests: int, active: int = 0) -> None:
    cluster.telemetry.record_metrics(
        "n1",
        parse_report(
            {
                "at": cluster.clock.time(),
                "instances": {
                    a: {
                        "app": "shop",
                        "workload": "api",
                        "cpu": 1.0,
                        "memory": 1 << 20,
                        "ready": True,
                    }
                    for a in ids
                },
                "ports": {
                    "shop.api.http": {
                        "requests": requests,
                        "active": active,
                        "endpoints": {a: {"requests": requests, "active": active} for a in ids},
                    }
                },
            }
        ),
    )


async def to_zero(cluster: Cluster, clock: FakeClock) -> None:
    await cluster.nodes.register(Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30)))
    await cluster.apps.apply(SPEC)
    assert await replicas(cluster) == 1  # min 0 starts with one: a request may come
    ids = await start_placed(cluster)
    clock.now += 6  # min_healthy_time: the version is stable
    await cluster.applier.follow_rollouts()
    sent = 0
    # busy: a request every second keeps it
    for _ in range(4):
        sent += 5
        report(cluster, ids, sent)
        await cluster.autoscaler.evaluate_once()
        clock.now += 1
    assert await replicas(cluster) == 1
    # quiet: after idle_after (2 s) without a request, the last replica goes
    for _ in range(4):
        report(cluster, ids, sent)
        await cluster.autoscaler.evaluate_once()
        clock.now += 1
    assert await replicas(cluster) == 0
    (down,) = await events_of(cluster, "service.autoscaled")
    assert down.message.startswith("scale down 1 → 0") and "idle_after 2s" in down.message
    assert down.data["limit"] == "idle"


async def test_idle_goes_to_zero_and_a_held_request_brings_one_back(cluster: Cluster) -> None:
    clock = cluster.clock
    assert isinstance(clock, FakeClock)
    await to_zero(cluster, clock)
    # nothing held: it stays at zero
    await cluster.autoscaler.evaluate_once()
    assert await replicas(cluster) == 0
    # a proxy holds 3 requests: one replica at once, before the next interval
    cluster.autoscaler.held_requests("shop", "api", 3)
    await cluster.autoscaler.evaluate_once()
    assert await replicas(cluster) == 1
    up = (await events_of(cluster, "service.autoscaled"))[-1]
    assert up.message.startswith("scale up 0 → 1") and "3 request(s) held" in up.message
    assert up.data["limit"] == "held-request"
    # the held count expires; the new replica is not idle from the old quiet
    clock.now += HELD_TTL + 1
    assert cluster.autoscaler.held_count("shop/api") == 0
    ids = await start_placed(cluster)
    report(cluster, ids, 0)
    await cluster.autoscaler.evaluate_once()
    assert await replicas(cluster) == 1


async def test_a_wake_wakes_the_loop_at_once(cluster: Cluster) -> None:
    clock = cluster.clock
    assert isinstance(clock, FakeClock)
    await to_zero(cluster, clock)
    loop = asyncio.create_task(cluster.autoscaler.run())
    try:
        for _ in range(50):  # the loop's first pass, then its sleep
            await asyncio.sleep(0)
        assert clock.sleepers >= 1
        cluster.autoscaler.held_requests("shop", "api", 1)
        for _ in range(200):  # no time passes: only the wake can run the pass
            await asyncio.sleep(0)
            if await replicas(cluster) == 1:
                break
        assert await replicas(cluster) == 1
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


@pytest.fixture
async def api(tmp_path: Path, cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(cluster, tmp_path) as client:
        yield client


async def test_the_wake_route(api: httpx.AsyncClient, cluster: Cluster) -> None:
    await cluster.nodes.register(Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30)))
    await cluster.apps.apply(SPEC.replace("http: 0}", "http: 0, grpc: {port: 0, protocol: grpc}}"))
    r = await api.post("/v1/nodes/n1/wake", json={"held": {"shop.api.http": 2, "shop.api.grpc": 1}})
    assert r.status_code == 200, r.text
    assert r.json() == {"services": ["shop/api"]}
    assert cluster.autoscaler.held_count("shop/api") == 2  # the most of its ports
    bad = await api.post("/v1/nodes/n1/wake", json={"held": {"shop/api": 1}})
    assert bad.status_code == 422 and "not a service port" in bad.json()["message"]
    bad = await api.post("/v1/nodes/n1/wake", json={"held": {"shop.api.http": 0}})
    assert bad.status_code == 422 and "expected 1..1000000" in bad.json()["message"]
    r = await httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_api(cluster, "x" * 32, Path("/nonexistent"))),
        base_url="http://test",
    ).post("/v1/nodes/n1/wake", json={"held": {"shop.api.http": 1}})
    assert r.status_code == 401  # the agents' token


async def test_the_wake_route_checks_the_node_and_the_port(
    api: httpx.AsyncClient, cluster: Cluster
) -> None:
    """A wake is taken only from a registered node, and only for a port that holds requests
    in the current mesh version (review of issue #13, finding 6)."""
    await cluster.apps.apply(SPEC)
    await cluster.apps.apply(
        "app: other\nservices:\n  web:\n    command: [x]\n    ports: {http: 0}\n"
    )
    r = await api.post("/v1/nodes/ghost/wake", json={"held": {"shop.api.http": 1}})
    assert r.status_code == 404 and "'ghost' is not registered" in r.json()["message"]
    assert cluster.autoscaler.held_count("shop/api") == 0
    await cluster.nodes.register(Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30)))
    # a service without scale to zero, and one that does not exist: nothing recorded
    r = await api.post(
        "/v1/nodes/n1/wake", json={"held": {"other.web.http": 3, "nope.api.http": 1}}
    )
    assert r.status_code == 200 and r.json() == {"services": []}
    assert cluster.autoscaler.held_count("other/web") == 0
    assert cluster.autoscaler.held_count("nope/api") == 0


async def test_a_wake_kicks_the_loop_once_and_only_at_zero(cluster: Cluster) -> None:
    """The agents repeat a wake every second while requests wait: only the first one for a
    service at zero replicas wakes the loop (review of issue #13, finding 6)."""
    a = cluster.autoscaler
    a.held_requests("shop", "api", 1, at_zero=False)  # replicas on their way: no pass now
    assert not a._kick.is_set()
    a.held_requests("shop", "api", 2, at_zero=True)  # now at zero: one pass
    assert a._kick.is_set() and a.held_count("shop/api") == 2
    a._kick.clear()
    a.held_requests("shop", "api", 3, at_zero=True)  # the same wake again: no new pass
    assert not a._kick.is_set() and a.held_count("shop/api") == 3
    clock = cluster.clock
    assert isinstance(clock, FakeClock)
    clock.now += HELD_TTL + 1  # forgotten: a new wake is new again
    a.held_requests("shop", "api", 1, at_zero=True)
    assert a._kick.is_set()


def test_a_stopped_service_holds_no_request() -> None:
    """A stopped service keeps its mesh cluster (no endpoint), but nothing will scale it back
    from zero: its callers get the named 503 at once, not a request held until its timeout."""
    from dataclasses import replace as _replace

    from elastin.mesh.model.build import build_clusters
    from elastin.model.spec import parse_spec
    from elastin.server.repo import AppRecord

    app = parse_spec(
        "app: z\nservices:\n  api:\n    command: [x]\n    ports: {http: 0}\n"
        "    autoscale: {min: 0, max: 2, metrics: [{rps: 10}]}\n",
        "t.yaml",
    )
    running = AppRecord(app=app)
    [cluster] = build_clusters({"z": running.for_mesh()}, [], {})
    assert cluster.scale_to_zero
    stopped = _replace(running, stopped=("api",))
    [cluster] = build_clusters({"z": stopped.for_mesh()}, [], {})
    assert not cluster.scale_to_zero
