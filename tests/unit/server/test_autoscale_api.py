"""The autoscaler through the API (issue #13, items 2 and 7): ``GET /v1/services`` shows an
autoscaled service's bounds and each metric's value against its target; ``GET /v1/events
?service=`` keeps one service's events (its own and its instances'), with a decision's
structured values in ``data``; ``POST /v1/scale`` refuses a count outside the bounds and says
what follows otherwise. ``elastin ps``'s autoscale table renders the same view."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from server_support import api_client

from elastin.cli.views import autoscale_table
from elastin.mesh.model.traffic import LATENCY_BOUNDS_MS
from elastin.model.cluster import Node
from elastin.model.codec import to_data
from elastin.model.resources import Resources
from elastin.server.api.users import ServiceWithAutoscale, event_of
from elastin.server.cluster import Cluster
from elastin.server.reports import AllocReport
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
    autoscale: {min: 1, max: 3, metrics: [{rps: 5}, {p99: 100ms}]}
  web:
    command: python3 -m http.server
    resources: {cpu: 100m, memory: 32Mi}
"""


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Cluster]]:
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=FakeClock(1000.0))
    async with api_client(cluster, tmp_path) as client:
        yield client, cluster


def test_event_subjects_by_service() -> None:
    assert event_of("shop/api", "api") and event_of("shop/api", "shop/api")
    assert event_of("shop.api[0] 1a2b3c4d", "api") and event_of("shop.api[2] x", "shop/api")
    assert not event_of("shop/api", "other/api") and not event_of("shop/apis", "api")
    assert not event_of("shop", "shop") and not event_of("n1", "api")


async def test_services_events_and_scale(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, cluster = api
    clock = cluster.clock
    assert isinstance(clock, FakeClock)
    n = Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30, 10 << 30))
    await client.post("/v1/nodes", json={"node": to_data(n)})
    await client.post("/v1/apps", json={"spec": SPEC})
    await cluster.applier.schedule_once()

    services = (await client.get("/v1/services")).json()
    by = {s["name"]: s for s in services}
    assert "autoscale" not in by["web"]
    before = by["api"]["autoscale"]
    assert before["min"] == 1 and before["max"] == 3 and before["reason"] == "not evaluated yet"
    assert [(m["metric"], m["target"], m["value"]) for m in before["metrics"]] == [
        ("rps", 5.0, None),
        ("p99", 0.1, None),
    ]

    # the replica runs, serves 20 requests/s, its longest response 50 ms; version stable
    allocs, _ = await cluster.views.all_allocations()
    await cluster.reports.update_many({a.id: AllocReport(status="running", pid=10) for a in allocs})
    clock.now += 6
    await cluster.applier.follow_rollouts()
    (a,) = [x for x in allocs if x.workload == "api"]
    for i, at in enumerate((clock.now - 1, clock.now)):
        cluster.telemetry.record_metrics(
            "n1",
            parse_report(
                {
                    "at": at,
                    "instances": {a.id: {"app": "shop", "workload": "api", "cpu": 10, "memory": 1}},
                    "ports": {
                        "shop.api.http": {
                            "requests": 20 * i,
                            "max_ms": 50.0,
                            "endpoints": {a.id: {"requests": 20 * i}},
                        }
                    },
                }
            ),
        )
    await cluster.autoscaler.evaluate_once()

    services = (await client.get("/v1/services")).json()
    from pydantic import TypeAdapter

    TypeAdapter(list[ServiceWithAutoscale]).validate_python(services, strict=False)
    now = {s["name"]: s for s in services}["api"]["autoscale"]
    assert now["current"] == 1 and now["desired"] == 3 and now["at"] == clock.now
    rps, p99 = now["metrics"]
    assert rps["value"] == 20.0 and rps["proposal"] == 4  # capped at max 3
    assert p99["value"] == 0.05 and "upper bound" in p99["note"]
    assert now["limit"] == "max"
    out = Console(width=200, record=True)
    table = autoscale_table(services)
    assert table is not None
    out.print(table)
    text = out.export_text()
    assert "shop/api" in text and "1..3" in text and "rps 20/s (5/s)" in text
    assert "p99 <=50ms (100ms)" in text and "max" in text

    events = (await client.get("/v1/events", params={"service": "api"})).json()
    assert {e["type"] for e in events} >= {"alloc.placed", "service.autoscaled"}
    assert all(e["subject"].startswith(("shop/api", "shop.api[")) for e in events)
    (scaled,) = [e for e in events if e["type"] == "service.autoscaled"]
    assert scaled["message"].startswith("scale up 1 → 3") and "upper bound" in scaled["message"]
    data: dict[str, Any] = scaled["data"]
    assert data["desired"] == 3 and data["min"] == 1 and data["max"] == 3
    assert data["limit"] == "max" and data["metrics"][0]["value"] == 20.0
    (last,) = (await client.get("/v1/events", params={"service": "web", "limit": 1})).json()
    assert last["subject"].startswith(("shop.web[", "shop/web"))

    r = await client.post("/v1/scale/api", json={"replicas": 9})
    assert r.status_code in (400, 422) and "1..3" in r.json()["message"]
    assert "min" in r.json()["hint"]
    r = await client.post("/v1/scale/api", json={"replicas": 2})
    assert r.status_code == 200 and "autoscaler goes on" in r.json()["note"]
    r = await client.post("/v1/scale/web", json={"replicas": 2})
    assert r.status_code == 200 and r.json()["note"] == ""


def buckets(fast: int, slow: int) -> list[list[int | None]]:
    """An agent's ``latency_buckets``: ``fast`` responses within 25 ms, ``slow`` ones in
    (150, 250] ms (cumulative ``le`` buckets, the last +Inf)."""
    out: list[list[int | None]] = []
    for le in (*LATENCY_BOUNDS_MS, None):
        n = (fast if le is None or le >= 25 else 0) + (slow if le is None or le >= 250 else 0)
        out.append([le, n])
    return out


async def test_a_measured_p99_is_decided_from_without_the_upper_bound_note(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, cluster = api
    clock = cluster.clock
    assert isinstance(clock, FakeClock)
    n = Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30, 10 << 30))
    await client.post("/v1/nodes", json={"node": to_data(n)})
    await client.post("/v1/apps", json={"spec": SPEC})
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    await cluster.reports.update_many({a.id: AllocReport(status="running", pid=10) for a in allocs})
    clock.now += 6
    await cluster.applier.follow_rollouts()
    (a,) = [x for x in allocs if x.workload == "api"]
    # 100 responses in the second: 98 within 25 ms, 2 in (150, 250] ms; the slowest 240 ms
    for i, at in enumerate((clock.now - 1, clock.now)):
        cluster.telemetry.record_metrics(
            "n1",
            parse_report(
                {
                    "at": at,
                    "instances": {a.id: {"app": "shop", "workload": "api", "cpu": 10, "memory": 1}},
                    "ports": {
                        "shop.api.http": {
                            "requests": 100 * i,
                            "max_ms": 240.0,
                            "endpoints": {a.id: {"requests": 100 * i}},
                            "latency_buckets": buckets(98 * i, 2 * i),
                        }
                    },
                }
            ),
        )
    await cluster.autoscaler.evaluate_once()
    services = (await client.get("/v1/services")).json()
    now = {s["name"]: s for s in services}["api"]["autoscale"]
    _, p99 = now["metrics"]
    # rank 99 of 100: the second of the two in (150, 250] -> 150 + 100 × 1/2
    assert p99["value"] == pytest.approx(0.2) and p99["proposal"] == 2
    assert "upper bound" not in p99["note"]
    assert "upper bound" not in now["reason"]
    out = Console(width=200, record=True)
    table = autoscale_table(services)
    assert table is not None
    out.print(table)
    text = out.export_text()
    assert "p99 200ms (100ms)" in text  # measured: no "<="
    events = (await client.get("/v1/events", params={"service": "api"})).json()
    (scaled,) = [e for e in events if e["type"] == "service.autoscaled"]
    assert "upper bound" not in scaled["message"]
    (metric,) = [m for m in scaled["data"]["metrics"] if m["kind"] == "p99"]
    assert metric["source"] == "p99_response_ms" and metric["value"] == pytest.approx(0.2)
