"""resource_report: the R/C/A formulas, allocated and measured, per node and cluster."""

from __future__ import annotations

import json

from sched_support import GI, MI, app, node, settle, state, svc

from elastin.model.cluster import Usage
from elastin.model.codec import to_data
from elastin.model.resources import Resources
from elastin.model.workload import Workload
from elastin.scheduler.accounting import resource_report


def test_formulas_per_kind() -> None:
    vm = svc("vm1", replicas=2, cpu=2000, mem_mi=2048, kind="vm")
    ct = svc("ct", replicas=3, cpu=500, mem_mi=256, kind="container")
    job = Workload(
        "j", type="job", parallelism=4, completions=10, resources=Resources(250, 128 * MI, GI)
    )
    st = settle(state([node("n1", cpu=16000, mem_gi=32)], [app("a", vm, ct, job)]))
    r = resource_report(st)
    kinds = {k.kind: k for k in r.kinds}
    assert [k.kind for k in r.kinds] == ["vm", "container", "task"]
    assert kinds["vm"].formula == "R_total = Σ R_i × V_i"
    assert kinds["vm"].requested == Resources(4000, 4096 * MI, 0)
    assert kinds["container"].requested == Resources(1500, 768 * MI, 0)
    assert kinds["task"].requested == Resources(1000, 512 * MI, 4 * GI)
    # everything fit, so allocated equals requested
    for k in r.kinds:
        assert k.allocated == k.requested
    assert r.cluster.allocated == Resources(6500, 5376 * MI, 4 * GI)
    assert r.cluster.free == r.cluster.capacity - r.cluster.allocated
    (n,) = r.nodes
    assert n.allocations == 2 + 3 + 4 and n.free == n.capacity - n.allocated


def test_measured_usage_and_json() -> None:
    st = settle(state([node("n1")], [app("a", svc("w", replicas=2))]))
    ids = sorted(st.allocations)
    usage = {ids[0]: Usage(cpu=120.5, memory=10 * MI), ids[1]: Usage(cpu=30.0, memory=5 * MI)}
    r = resource_report(st, usage)
    task = next(k for k in r.kinds if k.kind == "task")
    assert task.measured.cpu == 150.5 and task.measured.memory == 15 * MI
    assert r.nodes[0].measured.memory == 15 * MI and r.cluster.measured.cpu == 150.5
    data = to_data(r)
    json.dumps(data)
    assert set(data) == {"revision", "kinds", "nodes", "cluster"}
    assert data["kinds"][2]["requested"]["cpu"] == 1000


def test_pending_and_down_nodes() -> None:
    st = settle(
        state(
            [node("n1", mem_gi=1), node("n2", status="down")], [app("a", svc("big", mem_mi=4096))]
        )
    )
    r = resource_report(st)
    task = next(k for k in r.kinds if k.kind == "task")
    assert task.requested.memory == 4096 * MI and task.allocated == Resources()
    assert r.cluster.nodes == 1 and r.cluster.capacity == st.nodes["id-n1"].capacity
