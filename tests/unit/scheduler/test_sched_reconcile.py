"""Reconcile rules: services, jobs, scaling, spec changes, down nodes, deletion, pending."""

from __future__ import annotations

from dataclasses import replace

from sched_support import app, live, node, run, settle, state, svc, with_alloc

from elastin.model.resources import Resources
from elastin.model.workload import Workload
from elastin.scheduler import ClusterState, Lost, apply_plan, plan_writes, reconcile


def test_service_places_every_replica_once() -> None:
    st = state([node("n1"), node("n2")], [app("shop", svc("web", replicas=3))])
    plan = run(st)
    assert sorted(a.index for a in plan.place) == [0, 1, 2]
    assert all(a.node_id and a.spec_version == 1 and a.desired == "run" for a in plan.place)
    assert not plan.stop and not plan.preempt and not plan.update
    assert plan.base_rev == st.revision


def test_reconcile_again_after_apply_is_empty() -> None:
    st = settle(state([node("n1")], [app("shop", svc("web", replicas=2))]))
    assert run(st).is_empty()
    assert reconcile(st, "shop").is_empty()


def test_scale_down_stops_high_indexes() -> None:
    st = settle(state([node("n1")], [app("shop", svc("web", replicas=3))]))
    smaller = ClusterState(
        st.revision, st.nodes, {"shop": (app("shop", svc("web", 1)), {"web": 1})}, st.allocations
    )
    plan = run(smaller)
    stopped = {st.allocations[i].index: why for i, why in plan.stop}
    assert sorted(stopped) == [1, 2]
    assert all("scaled down" in why for why in stopped.values())
    assert not plan.place


def test_spec_change_replaces_old_version() -> None:
    st = settle(state([node("n1")], [app("shop", svc("web", replicas=1))]))
    (old,) = live(st)
    bumped = ClusterState(
        st.revision, st.nodes, {"shop": (app("shop", svc("web", 1)), {"web": 2})}, st.allocations
    )
    plan = run(bumped)  # the old one never ran: nothing to keep serving, it goes at once
    assert plan.stop == [(old.id, "spec changed (version 1 -> 2); it was not serving")]
    (new,) = plan.place
    assert new.index == 0 and new.spec_version == 2 and new.node_id == old.node_id


def test_down_node_allocation_is_lost_and_replaced() -> None:
    st = settle(state([node("n1"), node("n2", cpu=100)], [app("shop", svc("web"))]))
    (old,) = live(st)
    assert old.node_id == "id-n1"
    down = ClusterState(
        st.revision,
        {**st.nodes, "id-n1": replace(st.nodes["id-n1"], status="down")},
        st.apps,
        st.allocations,
    )
    plan = run(down)
    assert plan.lost == [Lost(old.id, "node n1 is down")] and not plan.stop
    (new,) = plan.place
    assert new.node_id == "" and new.index == 0  # n2 is too small: pending
    assert "1 node is down" in new.reason


def test_failed_service_is_not_replaced_until_spec_changes() -> None:
    st = settle(state([node("n1")], [app("shop", svc("web"))]))
    (a,) = live(st)
    st = with_alloc(st, replace(a, status="failed", reason="exec: no such file"))
    assert run(st).is_empty()
    bumped = ClusterState(
        st.revision, st.nodes, {"shop": (app("shop", svc("web")), {"web": 2})}, st.allocations
    )
    plan = run(bumped)
    assert [p.spec_version for p in plan.place] == [2]
    assert not plan.stop  # a terminal allocation is not stopped again


def test_complete_or_stopped_service_instance_is_replaced() -> None:
    st = settle(state([node("n1")], [app("shop", svc("web"))]))
    (a,) = live(st)
    for status in ("complete", "stopped", "lost"):
        plan = run(with_alloc(st, replace(a, status=status)))
        assert [p.index for p in plan.place] == [0]


def test_deleted_application_is_stopped() -> None:
    st = settle(state([node("n1")], [app("shop", svc("web", replicas=2))]))
    gone = ClusterState(st.revision, st.nodes, {}, st.allocations)
    plan = run(gone)
    assert sorted(why for _, why in plan.stop) == ["application deleted"] * 2
    assert reconcile(gone, "shop").stop == plan.stop


def test_removed_workload_is_stopped() -> None:
    st = settle(state([node("n1")], [app("shop", svc("web"), svc("api"))]))
    fewer = ClusterState(
        st.revision, st.nodes, {"shop": (app("shop", svc("web")), {"web": 1})}, st.allocations
    )
    plan = run(fewer)
    assert [why for _, why in plan.stop] == ["workload api removed from application shop"]


def test_duplicate_index_keeps_one() -> None:
    st = settle(state([node("n1")], [app("shop", svc("web"))]))
    (a,) = live(st)
    st = with_alloc(st, replace(a, id="zz-dup", status="starting"))
    plan = run(st)
    assert plan.stop == [("zz-dup", f"duplicate of {a.id}")]


def test_pending_is_retried_and_reason_kept_when_unchanged() -> None:
    big = svc("db", cpu=500, mem_mi=64 * 1024)
    st = settle(state([node("node-3", mem_gi=20)], [app("shop", big)]))
    (p,) = live(st)
    assert p.node_id == "" and p.status == "pending"
    assert p.reason.startswith("no node has 64Gi memory free (largest free: 20Gi on node-3)")
    assert run(st).is_empty()  # same reason: nothing to write
    bigger = ClusterState(
        st.revision, {**st.nodes, "id-n9": node("n9", mem_gi=128)}, st.apps, st.allocations
    )
    plan = run(bigger)
    assert [(u.id, u.node_id, u.reason) for u in plan.update] == [(p.id, "id-n9", "")]
    assert not plan.place


def test_pending_reason_changes_are_updates() -> None:
    st = settle(state([node("a", mem_gi=20)], [app("shop", svc("db", mem_mi=64 * 1024))]))
    (p,) = live(st)
    grown = ClusterState(st.revision, {"id-a": node("a", mem_gi=30)}, st.apps, st.allocations)
    plan = run(grown)
    (u,) = plan.update
    assert u.id == p.id and u.node_id == "" and "largest free: 30Gi on a" in u.reason


def test_reason_names_missing_driver() -> None:
    vm = svc("vm1", kind="vm")
    plan = run(state([node("n1", drivers=("task",))], [app("shop", vm)]))
    assert plan.place[0].reason == "no node has the vm driver"
    plan = run(
        state(
            [node("n1", drivers=("task",)), node("n2", mem_gi=1)],
            [app("shop", svc("vm1", kind="vm", mem_mi=4096))],
        )
    )
    assert "1 node lacks the 'vm' driver" in plan.place[0].reason
    assert "no node has 4Gi memory free (largest free: 1Gi on n2)" in plan.place[0].reason


def test_no_nodes_reason() -> None:
    plan = run(state([], [app("shop", svc("web"))]))
    assert "no nodes" in plan.place[0].reason


def job(name: str, completions: int, parallelism: int, retries: int = 1) -> Workload:
    return Workload(
        name=name,
        type="job",
        completions=completions,
        parallelism=parallelism,
        retries=retries,
        resources=Resources(100, 64 << 20, 0),
    )


def test_job_runs_parallelism_at_a_time_then_next_slots() -> None:
    st = settle(state([node("n1")], [app("batch", job("r", completions=3, parallelism=2))]))
    runs = sorted(live(st), key=lambda a: a.index)
    assert [a.index for a in runs] == [0, 1]
    assert run(st).is_empty()
    st = with_alloc(st, replace(runs[0], status="complete"))
    plan = run(st)
    assert [a.index for a in plan.place] == [2]
    st = apply_plan(st, plan)
    for a in live(st):
        st = with_alloc(st, replace(a, status="complete"))
    assert run(st).is_empty()


def test_job_failure_is_retried_then_gives_up() -> None:
    st = settle(
        state([node("n1")], [app("batch", job("r", completions=1, parallelism=1, retries=1))])
    )
    (a,) = live(st)
    st = with_alloc(st, replace(a, status="failed"))
    plan = run(st)
    assert [p.index for p in plan.place] == [0]  # retry 1 of 1
    st = apply_plan(st, plan)
    (b,) = live(st)
    st = with_alloc(st, replace(b, status="failed"))
    assert run(st).is_empty()  # 2 failures > 1 retry: the job has failed


def test_job_instances_on_down_node_are_replaced() -> None:
    st = settle(state([node("n1"), node("n2")], [app("batch", job("r", 1, 1))]))
    (a,) = live(st)
    down = ClusterState(
        st.revision,
        {**st.nodes, a.node_id: replace(st.nodes[a.node_id], status="down")},
        st.apps,
        st.allocations,
    )
    plan = run(down)
    assert plan.lost == [Lost(a.id, f"node {st.nodes[a.node_id].name} is down")]
    assert not plan.stop
    assert [p.index for p in plan.place] == [0] and plan.place[0].node_id != a.node_id


def test_job_spec_change_stops_old_runs() -> None:
    st = settle(state([node("n1")], [app("batch", job("r", 1, 1))]))
    (a,) = live(st)
    bumped = ClusterState(
        st.revision, st.nodes, {"batch": (st.apps["batch"][0], {"r": 2})}, st.allocations
    )
    plan = run(bumped)
    assert plan.stop == [(a.id, "spec changed (version 1 -> 2)")]
    assert [p.spec_version for p in plan.place] == [2]


def test_reconcile_touches_one_app_only() -> None:
    st = state([node("n1")], [app("a1", svc("web")), app("a2", svc("web"))])
    plan = reconcile(st, "a1")
    assert {p.app for p in plan.place} == {"a1"}


def test_an_allocation_already_stopping_on_a_down_node_is_lost_too() -> None:
    st = settle(state([node("n1")], [app("shop", svc("web"))]))
    (a,) = live(st)
    stopping = replace(a, desired="stop", status="running")
    down = ClusterState(
        st.revision,
        {**st.nodes, "id-n1": replace(st.nodes["id-n1"], status="down")},
        st.apps,
        {**st.allocations, a.id: stopping},
    )
    plan = run(down)
    assert plan.lost == [Lost(a.id, "node n1 is down")]
    after = apply_plan(down, plan, now=5.0).allocations[a.id]
    assert (after.status, after.desired, after.reason, after.updated_at) == (
        "lost",
        "stop",
        "node n1 is down",
        5.0,
    )


def test_commit_starts_from_the_current_allocation_not_the_plans_copy() -> None:
    """A plan made on an older snapshot changes only what it decided: a reason or a field
    changed since (here by another writer) survives the commit."""
    st = state([node("n1", cpu=100)], [app("shop", svc("web"))])
    plan = run(st)
    (pending,) = plan.place
    st = apply_plan(st, plan)
    roomy = ClusterState(
        st.revision,
        {"id-n1": replace(st.nodes["id-n1"], capacity=Resources(4000, 8 << 30, 0))},
        st.apps,
        st.allocations,
    )
    plan = run(roomy)
    (update,) = plan.update
    assert update.id == pending.id and update.node_id == "id-n1"
    moved = replace(roomy.allocations[pending.id], restarts=7)  # written after the plan
    newer = ClusterState(roomy.revision + 1, roomy.nodes, roomy.apps, {pending.id: moved})
    writes = plan_writes(newer, plan, now=1.0)
    assert writes.read == {pending.id}
    written = writes.allocs[pending.id]
    assert (written.node_id, written.reason, written.restarts) == ("id-n1", "", 7)


def test_a_retried_plan_does_not_lose_allocations_whose_node_came_back() -> None:
    st = settle(state([node("n1"), node("n2")], [app("shop", svc("web"))]))
    (a,) = live(st)
    down = ClusterState(
        st.revision,
        {**st.nodes, a.node_id: replace(st.nodes[a.node_id], status="down")},
        st.apps,
        st.allocations,
    )
    plan = run(down)
    assert [x.alloc_id for x in plan.lost] == [a.id]
    back = ClusterState(down.revision + 1, st.nodes, st.apps, st.allocations)  # ready again
    assert a.id not in plan_writes(back, plan).allocs
    assert plan_writes(down, plan).allocs[a.id].status == "lost"
