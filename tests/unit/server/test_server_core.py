"""The server's rooms on an in-memory store: apply, diff, scale, stop, schedule, reports,
the mesh feed, liveness and settlement, driven by a FakeClock."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from elastin.model.cluster import Node
from elastin.model.resources import Resources
from elastin.server.cluster import Cluster
from elastin.server.errors import Conflict, Invalid, NotFound
from elastin.server.reports import AllocReport
from elastin.server.views import AllocFilter
from elastin.store.memory import MemoryStore
from elastin.testing import FakeClock

SPEC = """
app: shop
services:
  web:
    command: python3 -m http.server
    resources: {cpu: 500m, memory: 128Mi}
    replicas: 2
  worker:
    command: python3 worker.py
    resources: {cpu: 250m, memory: 64Mi}
jobs:
  report:
    command: python3 report.py
    resources: {cpu: 250m, memory: 64Mi}
"""


def node(nid: str = "n1", cpu: int = 4000, mem_gi: int = 8) -> Node:
    return Node(id=nid, name=nid, capacity=Resources(cpu, mem_gi << 30, 100 << 30))


@pytest.fixture
async def cluster() -> Cluster:
    return await Cluster.open(MemoryStore(), seed=1, clock=FakeClock())


async def test_apply_dry_run_changes_nothing(cluster: Cluster) -> None:
    res = await cluster.apps.apply(SPEC, dry_run=True)
    assert res.dry_run and {c.change for c in res.changes} == {"add"}
    assert await cluster.views.revision() == 0
    assert await cluster.views.applications() == []


async def test_apply_then_diff_kinds(cluster: Cluster) -> None:
    await cluster.apps.apply(SPEC)
    same = await cluster.apps.apply(SPEC, dry_run=True)
    assert {c.change for c in same.changes} == {"unchanged"}
    changed = SPEC.replace("replicas: 2", "replicas: 3").replace("worker.py", "worker2.py")
    changed = changed.replace("  report:", "  other:")
    res = await cluster.apps.apply(changed, dry_run=True)
    by = {c.workload: c.change for c in res.changes}
    assert by == {"web": "scale", "worker": "update", "other": "add", "report": "remove"}


async def test_invalid_spec_raises_with_issues_and_changes_nothing(cluster: Cluster) -> None:
    await cluster.apps.apply(SPEC)
    rev = await cluster.views.revision()
    with pytest.raises(Invalid) as err:
        await cluster.apps.apply(SPEC.replace("replicas: 2", "replicaz: 2"), file="shop.yaml")
    assert err.value.issues and err.value.issues[0]["file"] == "shop.yaml"
    assert "replicaz" in err.value.message
    assert await cluster.views.revision() == rev


async def test_schedule_places_and_scale_down_stops(cluster: Cluster) -> None:
    await cluster.nodes.register(node())
    await cluster.apps.apply(SPEC)
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    assert sorted(a.workload for a in allocs) == ["report", "web", "web", "worker"]
    assert all(a.node_id == "n1" and a.status == "pending" for a in allocs)
    await cluster.apps.scale("web", 1)
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    web = [a for a in allocs if a.workload == "web"]
    assert sorted(a.desired for a in web) == ["run", "stop"]
    # never-started instances stop at once
    assert [a.status for a in web if a.desired == "stop"] == ["stopped"]
    assert any(e.type == "alloc.stopped" for e in await cluster.views.events(limit=0))


async def test_no_node_big_enough_stays_pending_with_reason(cluster: Cluster) -> None:
    await cluster.nodes.register(node(cpu=1000, mem_gi=1))
    await cluster.apps.apply(SPEC.replace("memory: 128Mi", "memory: 64Gi"))
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    web = [a for a in allocs if a.workload == "web"]
    assert web and all(a.status == "pending" and not a.node_id for a in web)
    assert "memory" in web[0].reason
    events = await cluster.views.events(limit=0)
    assert any(e.type == "alloc.pending" for e in events)


async def test_agent_reports_follow_the_lifecycle(cluster: Cluster) -> None:
    await cluster.nodes.register(node())
    await cluster.apps.apply(SPEC)
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    a = allocs[0]
    await cluster.reports.update(a.id, AllocReport(status="running", pid=42))
    done = await cluster.reports.update(a.id, AllocReport(status="failed", reason="exited 3"))
    assert done.status == "failed" and done.reason == "exited 3"
    with pytest.raises(Conflict):
        await cluster.reports.update(a.id, AllocReport(status="running"))
    with pytest.raises(NotFound):
        await cluster.reports.update("nope", AllocReport(status="running"))


async def test_stop_delete_and_scale_errors(cluster: Cluster) -> None:
    await cluster.nodes.register(node())
    await cluster.apps.apply(SPEC)
    with pytest.raises(NotFound):
        await cluster.apps.scale("nope", 1)
    with pytest.raises(Invalid):
        await cluster.apps.scale("report", 2)  # a job
    with pytest.raises(Invalid):
        await cluster.apps.scale("web", 5000)
    stopped = await cluster.apps.stop("web")
    assert stopped == ["shop/web"]
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    assert all(a.desired == "stop" for a in allocs if a.workload == "web")
    await cluster.apps.delete("shop")
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    assert all(a.desired == "stop" for a in allocs)
    with pytest.raises(NotFound):
        await cluster.apps.delete("shop")


async def test_resources_report_is_json(cluster: Cluster) -> None:
    await cluster.nodes.register(node())
    await cluster.apps.apply(SPEC)
    await cluster.applier.schedule_once()
    report: dict[str, Any] = await cluster.views.resources()
    # what the scheduler placed is what the report says is allocated: web 2 x 500m + worker
    # 250m (the job's run too while it is live)
    (n,) = report["nodes"]
    assert n["node_id"] == "n1" and n["allocations"] == 4
    assert n["allocated"]["cpu"] == 2 * 500 + 250 + 250
    assert report["cluster"]["allocated"] == n["allocated"]
    json.dumps(report)  # plain JSON types only


async def test_mesh_convergence_follows_the_agents_acknowledgements(cluster: Cluster) -> None:
    # an agent asking for a version past N has applied N
    await cluster.mesh.snapshot("n1", 0, 0)
    await cluster.mesh.snapshot("n2", 0, 0)
    await cluster.apps.apply(SPEC)
    version = (await cluster.mesh.snapshot("n1", 0, 0)).version
    assert version > 0
    assert cluster.mesh.pending(version) == ["n1", "n2"]
    await cluster.mesh.snapshot("n1", version, 0)
    assert await cluster.mesh.converged(version, 0.05) == ["n2"]
    await cluster.mesh.snapshot("n2", version + 5, 0)
    assert await cluster.mesh.converged(version, 1.0) == []


async def test_service_registry_is_a_blocking_query(cluster: Cluster) -> None:
    index, entries = await cluster.mesh.registry(0, 0)
    assert entries == ()
    await cluster.apps.apply(SPEC)
    newer, entries = await cluster.mesh.registry(index, 1.0)
    assert newer > index and {e.name for e in entries} == {"web", "worker"}


async def test_mesh_stream_pushes_each_version_as_the_model_encodes_it(cluster: Cluster) -> None:
    import json

    from elastin.mesh.model import MeshSnapshot
    from elastin.mesh.model.build import localize
    from elastin.model.codec import from_data

    await cluster.nodes.register(node())
    await cluster.apps.apply(SPEC.replace("python3 -m http.server", "web\n    ports: {http: 8080}"))
    await cluster.applier.schedule_once()
    stream = cluster.mesh.stream("n1", keepalive=0.05)
    first = localize(from_data(MeshSnapshot, json.loads(await anext(stream))))
    assert first == await cluster.mesh.snapshot("n1", 0, 0)  # the wire form is the model's
    assert [c.name for c in first.clusters] == ["shop.web.http"]
    assert await anext(stream) == b"\n"  # quiet: a keep-alive line
    await cluster.apps.scale("web", 3)
    await cluster.applier.schedule_once()
    line = await anext(stream)
    while line == b"\n":
        line = await anext(stream)
    assert json.loads(line)["version"] > first.version
    await stream.aclose()
    assert cluster.mesh.pending(10**9) == ["n1"]  # a proxy that streamed counts for draining


async def test_a_silent_node_is_marked_down_and_its_mesh_counters_dropped() -> None:
    from elastin.mesh.model.traffic import ClusterStats

    clock = FakeClock()
    c = await Cluster.open(MemoryStore(), clock=clock, seed=1)
    await c.nodes.register(node())
    stats = {"shop.web.http": ClusterStats("shop", "web", "http", "http", 7)}
    await c.nodes.heartbeat("n1", {}, None, stats)
    assert c.telemetry.traffic()[0]["requests"] == 7
    clock.advance(29)
    await c.nodes.check()
    assert (await c.views.node("n1")).status == "ready"
    clock.advance(2)  # past the heartbeat TTL
    await c.nodes.check()
    assert (await c.views.node("n1")).status == "down"
    assert c.telemetry.traffic() == []
    events = await c.views.events(limit=0)
    assert events[-1].type == "node.down"


async def test_a_batch_of_reports_is_one_commit_and_a_bad_one_fails_alone(
    cluster: Cluster,
) -> None:
    await cluster.nodes.register(node())
    await cluster.apps.apply(SPEC)
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    web = [a for a in allocs if a.workload == "web"]
    rev = await cluster.views.revision()
    reports = {a.id: AllocReport(status="running", pid=10 + a.index) for a in web}
    reports["nope"] = AllocReport(status="running")
    job = next(a for a in allocs if a.workload == "report")
    reports[job.id] = AllocReport(status="complete")  # pending -> complete: illegal
    results = await cluster.reports.update_many(reports)
    assert [results[a.id] for a in web] == ["ok", "ok"]
    assert "no allocation" in results["nope"] and "cannot go from" in results[job.id]
    assert await cluster.views.revision() == rev + 1  # one transaction for the batch
    assert cluster.changes.mesh.value == rev + 1  # endpoints changed: one wake
    assert {a.status for a in await cluster.views.allocations(AllocFilter(workload="web"))} == {
        "running"
    }
    again = await cluster.reports.update_many({web[0].id: AllocReport(status="running")})
    assert again == {web[0].id: "ok"} and await cluster.views.revision() == rev + 1


async def test_reads_decode_each_version_once_and_see_every_write() -> None:
    """The repo's decoded objects are shared between reads of one version (they are
    frozen); a write, a delete or a re-created key is never served from the old one."""
    from elastin.model.cluster import Allocation
    from elastin.server.repo import Repo

    repo = Repo(MemoryStore())
    a = Allocation("a1", "shop", "web", 0)
    await repo.commit(allocs=[a, Allocation("a2", "shop", "web", 1)])
    first, _ = await repo.list_allocs()
    again, _ = await repo.list_allocs()
    assert first == again and all(x is y for x, y in zip(first, again, strict=True))
    found = await repo.get_alloc("a1")
    assert found is not None and found[0] is first[0]
    await repo.commit(allocs=[replace(a, status="running")])
    found = await repo.get_alloc("a1")
    assert found is not None and found[0].status == "running"
    await repo.commit(delete_allocs=["a1"])
    assert await repo.get_alloc("a1") is None
    assert [x.id for x in (await repo.list_allocs())[0]] == ["a2"]
    await repo.commit(allocs=[a])  # the same key again, at a new revision
    snap = await repo.snapshot()
    assert snap.allocs["a1"][0].status == "pending"


async def test_liveness_never_overwrites_a_registration_or_a_heartbeat(tmp_path: Path) -> None:
    """The SQLite store's writes yield to other tasks: a node marked down, a registration and
    a heartbeat in flight at once must not undo each other."""
    from elastin.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "s.db")
    clock = FakeClock()
    c = await Cluster.open(store, clock=clock, seed=1)
    try:
        old = replace(node(), attributes=(("agent.api", "127.0.0.1:1111"),))
        await c.nodes.register(old)
        clock.advance(31)  # silent past the TTL, still ready
        new = replace(node(), attributes=(("agent.api", "127.0.0.1:2222"),))
        registering = asyncio.create_task(c.nodes.register(new))
        await asyncio.sleep(0)  # its write is queued on the store's thread
        await c.nodes.check()
        await registering
        n = await c.views.node("n1")
        assert (n.status, n.attrs()["agent.api"]) == ("ready", "127.0.0.1:2222")

        clock.advance(30.5)
        beating = asyncio.create_task(c.nodes.heartbeat("n1", {}, None))
        await asyncio.sleep(0)  # the heartbeat arrived; its record is being written
        await c.nodes.check()
        await beating
        assert (await c.views.node("n1")).status == "ready"
    finally:
        await store.close()


async def test_a_node_that_could_inject_into_a_proxy_config_is_refused(cluster: Cluster) -> None:
    for bad in (
        replace(node(), address="127.0.0.1\n    server evil 6.6.6.6:80"),
        replace(node(), address="not a host"),
        replace(node(), name="n1\nnode.down"),
        replace(node(), id="../../etc"),
        replace(node(), attributes=(("agent.api", "127.0.0.1:1\r\nX: y"),)),
        replace(node(), attributes=(("agent.api", "169.254.169.254:80"),)),  # not an agent
        replace(node(), attributes=(("agent.api", "localhost:4851"),)),  # not an IP literal
        replace(node(), capacity=Resources(-5, 1, 1)),
    ):
        with pytest.raises(Invalid):
            await cluster.nodes.register(bad)
    assert await cluster.views.nodes() == []  # nothing was written
    for good in ("10.0.0.7", "::1", "node-7.example.internal"):
        await cluster.nodes.register(replace(node(), address=good))


async def test_a_settlement_wait_wakes_when_an_instance_outlives_min_healthy_time() -> None:
    clock = FakeClock()
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=clock)
    await cluster.nodes.register(node())
    spec = """
app: one
services:
  web:
    command: python3 -m http.server
    resources: {cpu: 100m, memory: 64Mi}
    update: {min_healthy_time: 0.2s}
"""
    await cluster.apps.apply(spec)
    await cluster.applier.schedule_once()
    (a,) = (await cluster.views.all_allocations())[0]
    await cluster.reports.update(a.id, AllocReport(status="running", pid=42))
    rev, s = await cluster.apps.settlement("one", 0, 0)
    assert s.state == "settling"  # running, not yet for min_healthy_time
    waiter = asyncio.create_task(cluster.apps.settlement("one", rev, 60))
    await asyncio.sleep(0.05)  # it waits
    assert not waiter.done()
    clock.advance(1.0)  # the time passes; no write marks it
    # before: blocked for the whole 60 s, as nothing was written
    _, s = await asyncio.wait_for(waiter, 10)
    assert s.state == "settled"
