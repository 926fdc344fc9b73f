"""The server's operations on an in-memory store: apply, diff, scale, stop, schedule, reports."""

from __future__ import annotations

from typing import Any

import pytest

from elastin.model.cluster import Node
from elastin.model.resources import Resources
from elastin.server.core import Cluster
from elastin.server.errors import Conflict, Invalid, NotFound
from elastin.store.memory import MemoryStore

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
def cluster() -> Cluster:
    return Cluster(MemoryStore(), seed=1)


async def test_apply_dry_run_changes_nothing(cluster: Cluster) -> None:
    res = await cluster.apply(SPEC, dry_run=True)
    assert res.dry_run and {c.change for c in res.changes} == {"add"}
    assert await cluster.store.revision() == 0
    assert await cluster.repo.list_apps() == []


async def test_apply_then_diff_kinds(cluster: Cluster) -> None:
    await cluster.apply(SPEC)
    same = await cluster.apply(SPEC, dry_run=True)
    assert {c.change for c in same.changes} == {"unchanged"}
    changed = SPEC.replace("replicas: 2", "replicas: 3").replace("worker.py", "worker2.py")
    changed = changed.replace("  report:", "  other:")
    res = await cluster.apply(changed, dry_run=True)
    by = {c.workload: c.change for c in res.changes}
    assert by == {"web": "scale", "worker": "update", "other": "add", "report": "remove"}


async def test_invalid_spec_raises_with_issues_and_changes_nothing(cluster: Cluster) -> None:
    await cluster.apply(SPEC)
    rev = await cluster.store.revision()
    with pytest.raises(Invalid) as err:
        await cluster.apply(SPEC.replace("replicas: 2", "replicaz: 2"), file="shop.yaml")
    assert err.value.issues and err.value.issues[0]["file"] == "shop.yaml"
    assert "replicaz" in err.value.message
    assert await cluster.store.revision() == rev


async def test_schedule_places_and_scale_down_stops(cluster: Cluster) -> None:
    await cluster.register_node(node())
    await cluster.apply(SPEC)
    await cluster.schedule_once()
    allocs, _ = await cluster.repo.list_allocs()
    assert sorted(a.workload for a in allocs) == ["report", "web", "web", "worker"]
    assert all(a.node_id == "n1" and a.status == "pending" for a in allocs)
    await cluster.scale("web", 1)
    await cluster.schedule_once()
    allocs, _ = await cluster.repo.list_allocs()
    web = [a for a in allocs if a.workload == "web"]
    assert sorted(a.desired for a in web) == ["run", "stop"]
    # never-started instances stop at once
    assert [a.status for a in web if a.desired == "stop"] == ["stopped"]
    assert any(e.type == "alloc.stopped" for e in await cluster.repo.list_events())


async def test_no_node_big_enough_stays_pending_with_reason(cluster: Cluster) -> None:
    await cluster.register_node(node(cpu=1000, mem_gi=1))
    await cluster.apply(SPEC.replace("memory: 128Mi", "memory: 64Gi"))
    await cluster.schedule_once()
    allocs, _ = await cluster.repo.list_allocs()
    web = [a for a in allocs if a.workload == "web"]
    assert web and all(a.status == "pending" and not a.node_id for a in web)
    assert "memory" in web[0].reason
    events = await cluster.repo.list_events()
    assert any(e.type == "alloc.pending" for e in events)


async def test_agent_reports_follow_the_lifecycle(cluster: Cluster) -> None:
    await cluster.register_node(node())
    await cluster.apply(SPEC)
    await cluster.schedule_once()
    allocs, _ = await cluster.repo.list_allocs()
    a = allocs[0]
    await cluster.update_alloc(a.id, {"status": "running", "pid": 42})
    done = await cluster.update_alloc(a.id, {"status": "failed", "reason": "exited 3"})
    assert done.status == "failed" and done.reason == "exited 3"
    with pytest.raises(Conflict):
        await cluster.update_alloc(a.id, {"status": "running"})
    with pytest.raises(NotFound):
        await cluster.update_alloc("nope", {"status": "running"})


async def test_stop_delete_and_scale_errors(cluster: Cluster) -> None:
    await cluster.register_node(node())
    await cluster.apply(SPEC)
    with pytest.raises(NotFound):
        await cluster.scale("nope", 1)
    with pytest.raises(Invalid):
        await cluster.scale("report", 2)  # a job
    with pytest.raises(Invalid):
        await cluster.scale("web", 5000)
    stopped = await cluster.stop("web")
    assert stopped == ["shop/web"]
    await cluster.schedule_once()
    allocs, _ = await cluster.repo.list_allocs()
    assert all(a.desired == "stop" for a in allocs if a.workload == "web")
    await cluster.delete_app("shop")
    await cluster.schedule_once()
    allocs, _ = await cluster.repo.list_allocs()
    assert all(a.desired == "stop" for a in allocs)
    with pytest.raises(NotFound):
        await cluster.delete_app("shop")


async def test_resources_report_is_json(cluster: Cluster) -> None:
    await cluster.register_node(node())
    await cluster.apply(SPEC)
    await cluster.schedule_once()
    report: dict[str, Any] = await cluster.resources()
    assert report


async def test_mesh_convergence_follows_the_agents_acknowledgements(cluster: Cluster) -> None:
    # an agent asking for a version past N has applied N
    await cluster.mesh_snapshot("n1", 0, 0)
    await cluster.mesh_snapshot("n2", 0, 0)
    await cluster.apply(SPEC)
    version = (await cluster.mesh_snapshot("n1", 0, 0)).version
    assert version > 0
    assert cluster.mesh_pending(version) == ["n1", "n2"]
    await cluster.mesh_snapshot("n1", version, 0)
    assert await cluster.mesh_converged(version, 0.05) == ["n2"]
    await cluster.mesh_snapshot("n2", version + 5, 0)
    assert await cluster.mesh_converged(version, 1.0) == []


async def test_service_registry_is_a_blocking_query(cluster: Cluster) -> None:
    index, entries = await cluster.service_registry(0, 0)
    assert entries == ()
    await cluster.apply(SPEC)
    newer, entries = await cluster.service_registry(index, 1.0)
    assert newer > index and {e.name for e in entries} == {"web", "worker"}


async def test_mesh_stream_pushes_each_version_as_the_model_encodes_it(cluster: Cluster) -> None:
    import json

    from elastin.mesh.model import MeshSnapshot
    from elastin.mesh.model.build import localize
    from elastin.model.codec import from_data

    await cluster.register_node(node())
    await cluster.apply(SPEC.replace("python3 -m http.server", "web\n    ports: {http: 8080}"))
    await cluster.schedule_once()
    stream = cluster.mesh_stream("n1", keepalive=0.05)
    first = localize(from_data(MeshSnapshot, json.loads(await anext(stream))))
    assert first == await cluster.mesh_snapshot("n1", 0, 0)  # the wire form is the model's
    assert [c.name for c in first.clusters] == ["shop.web.http"]
    assert await anext(stream) == b"\n"  # quiet: a keep-alive line
    await cluster.scale("web", 3)
    await cluster.schedule_once()
    line = await anext(stream)
    while line == b"\n":
        line = await anext(stream)
    assert json.loads(line)["version"] > first.version
    await stream.aclose()
    assert cluster.mesh_pending(10**9) == ["n1"]  # a proxy that streamed counts for draining


async def test_a_silent_node_is_marked_down_and_its_mesh_counters_dropped() -> None:
    from elastin.mesh.model.traffic import ClusterStats

    now = [1000.0]
    c = Cluster(MemoryStore(), clock=lambda: now[0], seed=1)
    await c.register_node(node())
    await c.heartbeat(
        "n1", {}, None, {"shop.web.http": ClusterStats("shop", "web", "http", "http", 7)}
    )
    assert c.mesh_traffic()[0]["requests"] == 7
    now[0] += 31  # past the heartbeat TTL
    await c.check_nodes()
    found = await c.repo.get_node("n1")
    assert found is not None and found[0].status == "down"
    assert c.mesh_traffic() == []
    events = await c.repo.list_events()
    assert events[-1].type == "node.down"
