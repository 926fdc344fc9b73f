"""A resize the agent refuses (memory below what the instance uses, a kernel that says no):
its report (``resize_refused``: the limits refused and those the instance runs with) puts
the allocation's resources back when they are still the refused ones (a compare-and-set: a
later resize is kept), the node's accounting follows, and ``auto`` tries again after
``AUTO_EVERY``; the vertical loop forgets the allocations that are gone. In-memory store,
FakeClock; the route through the real API app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from server_support import api_client, placed_vertical

from elastin.model.cluster import Allocation, Node
from elastin.model.resources import Resources
from elastin.server.cluster import Cluster
from elastin.server.reports import AllocReport
from elastin.server.vertical import AUTO_EVERY
from elastin.server.windows import InstanceReading, NodeReport
from elastin.store.memory import MemoryStore
from elastin.testing import FakeClock

MI = 1 << 20
START = Resources(500, 128 * MI)


def node(nid: str = "n1") -> Node:
    return Node(id=nid, name=nid, capacity=Resources(4000, 4096 * MI, 100 << 30))


def reading(a: Allocation, at: float) -> NodeReport:
    r = InstanceReading("shop", "web", cpu=50.0, memory=40 * MI, ready=True)
    return NodeReport(at=at, interval=1.0, instances={a.id: r}, ports={})


async def auto_pass(cluster: Cluster, clock: FakeClock, a: Allocation) -> list[dict[str, object]]:
    """Feed one second of use (50m, 40Mi) and run one pass of the loop."""
    cluster.telemetry.record_metrics("n1", reading(a, clock.time()))
    done = await cluster.vertical.step()
    clock.advance(1.0)
    return done


async def auto_resized() -> tuple[Cluster, FakeClock, Allocation]:
    """A cluster whose one instance (vertical mode auto) the loop has resized (within five
    passes)."""
    clock = FakeClock()
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=clock)
    await cluster.nodes.register(node())
    a = await placed_vertical(cluster, "auto")
    for _ in range(5):
        if await auto_pass(cluster, clock, a):
            break
    return cluster, clock, a


async def test_a_refused_auto_resize_is_put_back_and_tried_again() -> None:
    cluster, clock, a = await auto_resized()
    resized = (await cluster.views.allocation(a.id)).resources
    assert resized != START
    # the agent could not apply it: it runs with what it had
    await cluster.reports.update(a.id, AllocReport(resize_refused=(resized, START)))
    assert (await cluster.views.allocation(a.id)).resources == START
    report = await cluster.views.resources()
    assert report["nodes"][0]["allocated"]["memory"] == 128 * MI
    # outside the bounds again: tried again, once the rate limit allows
    assert await auto_pass(cluster, clock, a) == []
    clock.advance(AUTO_EVERY)
    [again] = await auto_pass(cluster, clock, a)
    assert again["action"] == "in_place"
    assert (await cluster.views.allocation(a.id)).resources != START


async def test_a_stale_refusal_leaves_a_later_resize() -> None:
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=FakeClock())
    await cluster.nodes.register(node())
    a = await placed_vertical(cluster)
    first, second = Resources(800, 200 * MI), Resources(900, 300 * MI)
    await cluster.vertical.resize(a.id, first)
    await cluster.vertical.resize(a.id, second)
    # the refusal of the first comes after the second: the second stands (the agent applies it)
    await cluster.reports.update(a.id, AllocReport(resize_refused=(first, START)))
    assert (await cluster.views.allocation(a.id)).resources == second


async def test_the_loop_forgets_allocations_that_are_gone() -> None:
    cluster, _, a = await auto_resized()
    assert a.id in cluster.vertical._last_resize
    await cluster.reports.update(a.id, AllocReport(status="failed", reason="gone"))
    await cluster.vertical.step()
    assert a.id not in cluster.vertical._last_resize


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Cluster]]:
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=FakeClock())
    async with api_client(cluster, tmp_path) as client:
        yield client, cluster


async def test_the_agents_report_route_takes_a_refusal(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, cluster = api
    await cluster.nodes.register(node())
    a = await placed_vertical(cluster)
    await cluster.vertical.resize(a.id, Resources(800, 200 * MI))
    body = {
        "resize_refused": {
            "refused": {"cpu": 800, "memory": 200 * MI},
            "running": {"cpu": 500, "memory": 128 * MI},
        },
        "events": [["alloc.resize_failed", a.label, "not applied", "warning"]],
    }
    r = await client.post("/v1/allocations/status", json={"reports": {a.id: body}})
    assert r.json() == {"results": {a.id: "ok"}}
    assert (await cluster.views.allocation(a.id)).resources == START
    events = await cluster.views.events(limit=0)
    assert any(e.type == "alloc.resize_failed" for e in events)
