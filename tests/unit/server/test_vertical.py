"""Vertical scaling in the server, on an in-memory store and a FakeClock: a resize in place
when the node has room (the node's allocated totals and the R/C/A terms follow), a move when
it has not, a refusal when no node has; the recommender loop fed from the one-second windows,
an OOM kill raising the memory at once in ``auto`` mode, nothing in ``recommend``."""

from __future__ import annotations

import pytest
from server_support import placed_vertical

from elastin.model.cluster import Allocation, Node
from elastin.model.resources import Resources
from elastin.server.cluster import Cluster
from elastin.server.errors import Conflict, Invalid, NotFound
from elastin.server.reports import AllocReport
from elastin.server.vertical import whole_mib
from elastin.server.windows import InstanceReading, NodeReport
from elastin.store.memory import MemoryStore
from elastin.testing import FakeClock

MI = 1 << 20


def node(nid: str, cpu: int = 1000, mem_mi: int = 256) -> Node:
    return Node(id=nid, name=nid, capacity=Resources(cpu, mem_mi * MI, 100 << 30))


@pytest.fixture
async def cluster() -> Cluster:
    return await Cluster.open(MemoryStore(), seed=1, clock=FakeClock())


async def test_in_place_when_the_node_has_room(cluster: Cluster) -> None:
    await cluster.nodes.register(node("n1"))
    a = await placed_vertical(cluster)
    done = await cluster.vertical.resize(a.id, Resources(800, 200 * MI))
    assert done["action"] == "in_place" and done["node"] == "n1"
    now = await cluster.views.allocation(a.id)
    assert (now.id, now.node_id, now.resources) == (a.id, "n1", Resources(800, 200 * MI))
    report = await cluster.views.resources()
    assert report["nodes"][0]["allocated"]["cpu"] == 800
    assert report["nodes"][0]["allocated"]["memory"] == 200 * MI
    # the task formula's term follows the allocation, not the spec's 500m
    task = next(k for k in report["kinds"] if k["kind"] == "task")
    assert task["requested"]["cpu"] == 800 and task["requested"]["memory"] == 200 * MI
    events = await cluster.views.events(limit=0)
    assert any(
        e.type == "alloc.resize" and "cpu 500m → 800m, memory 128Mi → 200Mi in place" in e.message
        for e in events
    )


async def test_moved_when_only_another_node_has_room(cluster: Cluster) -> None:
    await cluster.nodes.register(node("n1", cpu=1000, mem_mi=256))
    a = await placed_vertical(cluster)
    await cluster.nodes.register(node("n2", cpu=4000, mem_mi=2048))
    done = await cluster.vertical.resize(a.id, Resources(2000, 1024 * MI))
    assert done["action"] == "moved" and done["node"] == "n2", done
    old = await cluster.views.allocation(a.id)
    new = await cluster.views.allocation(done["to"])
    assert old.desired == "stop" and "no room on n1" in old.reason and "moved to n2" in old.reason
    assert (new.node_id, new.index, new.status) == ("n2", a.index, "pending")
    assert new.resources == Resources(2000, 1024 * MI)
    # the scheduler leaves it so: no duplicate placed for the index
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.applier.repo.list_allocs()
    live = [x for x in allocs if x.desired == "run"]
    assert [x.id for x in live] == [new.id]


async def test_refused_when_no_node_has_room(cluster: Cluster) -> None:
    await cluster.nodes.register(node("n1"))
    a = await placed_vertical(cluster)
    with pytest.raises(Conflict, match="fits neither on its node n1"):
        await cluster.vertical.resize(a.id, Resources(500, 4096 * MI))
    assert (await cluster.views.allocation(a.id)).resources == Resources(500, 128 * MI)
    with pytest.raises(Invalid, match="at least 4Mi"):
        await cluster.vertical.resize(a.id, Resources(500, MI))
    with pytest.raises(NotFound):
        await cluster.vertical.resize("nope", Resources(500, 64 * MI))


def report(cluster: Cluster, a: Allocation, at: float, memory: int) -> NodeReport:
    reading = InstanceReading("shop", "web", cpu=50.0, memory=memory, ready=True)
    return NodeReport(at=at, interval=1.0, instances={a.id: reading}, ports={})


async def test_auto_resizes_outside_the_bounds_and_an_oom_raises_memory_at_once() -> None:
    clock = FakeClock()
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=clock)
    await cluster.nodes.register(node("n1", cpu=4000, mem_mi=4096))
    a = await placed_vertical(cluster, "auto")
    for _ in range(5):
        cluster.telemetry.record_metrics("n1", report(cluster, a, clock.time(), 40 * MI))
        done = await cluster.vertical.step()
        clock.advance(1.0)
        if done:
            break
    now = await cluster.views.allocation(a.id)
    # 50m used: the cpu held at the policy's 100m; memory from the 40Mi peaks plus 15%
    assert now.resources.cpu == 100
    assert 40 * MI < now.resources.memory < 64 * MI and now.resources.memory % MI == 0
    # within the rate limit nothing more happens, whatever comes
    assert await cluster.vertical.step() == []
    # an OOM kill at the new limit: raised at once, past 1.2 × the limit
    limit = now.resources.memory
    await cluster.reports.update(
        a.id, AllocReport(events=(("alloc.oom_killed", now.label, "killed", "error"),))
    )
    cluster.vertical._oom_labels.append(now.label)  # what watch_ooms notes from the store
    [done] = await cluster.vertical.step()
    assert "OOM-killed at" in done["message"]
    raised = await cluster.views.allocation(a.id)
    assert raised.resources.memory >= 1.2 * limit


async def test_recommend_mode_shows_and_never_resizes() -> None:
    clock = FakeClock()
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=clock)
    await cluster.nodes.register(node("n1", cpu=4000, mem_mi=4096))
    a = await placed_vertical(cluster, "recommend")
    for _ in range(5):
        cluster.telemetry.record_metrics("n1", report(cluster, a, clock.time(), 40 * MI))
        assert await cluster.vertical.step() == []
        clock.advance(1.0)
    [svc] = await cluster.vertical.recommendations("web")
    assert svc["mode"] == "recommend" and svc["request"] == {"cpu": 500, "memory": 128 * MI}
    assert svc["recommendation"]["target"]["cpu"] == 100
    assert svc["instances"][0]["request"] == {"cpu": 500, "memory": 128 * MI}
    assert svc["instances"][0]["outside"] is True
    assert (await cluster.views.allocation(a.id)).resources == Resources(500, 128 * MI)
    with pytest.raises(NotFound):
        await cluster.vertical.recommendations("nope")


def test_whole_mib_rounds_up() -> None:
    assert whole_mib(Resources(100, 46826876)) == Resources(100, 45 * MI)
    assert whole_mib(Resources(100, 45 * MI)) == Resources(100, 45 * MI)
