"""check_plan: a plan re-validated against a newer snapshot."""

from __future__ import annotations

from dataclasses import replace

from sched_support import app, node, run, state, svc, with_alloc

from elastin.model.cluster import Allocation
from elastin.model.resources import Resources
from elastin.scheduler import ClusterState, check_plan


def test_plan_is_valid_on_its_own_snapshot() -> None:
    st = state([node("n1"), node("n2")], [app("s", svc("w", replicas=4))])
    assert check_plan(run(st), st) == []


def test_conflicts_when_node_goes_down_or_away() -> None:
    st = state([node("n1")], [app("s", svc("w"))])
    plan = run(st)
    down = ClusterState(2, {"id-n1": replace(st.nodes["id-n1"], status="down")}, st.apps, {})
    assert check_plan(plan, down) == ["s.w[0]: node n1 is down"]
    gone = ClusterState(2, {}, st.apps, {})
    assert check_plan(plan, gone) == ["s.w[0]: node id-n1 is gone"]


def test_conflict_when_someone_else_took_the_room() -> None:
    st = state([node("n1", cpu=1000)], [app("s", svc("w", cpu=800))])
    plan = run(st)
    other = Allocation(
        id="o",
        app="x",
        workload="y",
        index=0,
        node_id="id-n1",
        resources=Resources(500, 0, 0),
        status="running",
    )
    (conflict,) = check_plan(plan, with_alloc(st, other))
    assert conflict.startswith("s.w[0]: no longer fits on node n1 (short of cpu")


def test_stops_in_the_plan_release_room() -> None:
    st = state([node("n1", cpu=1000)], [app("s", svc("w", cpu=800))])
    plan = run(st)
    other = Allocation(
        id="o",
        app="x",
        workload="y",
        index=0,
        node_id="id-n1",
        resources=Resources(500, 0, 0),
        status="running",
    )
    plan.stop.append(("o", "test"))
    assert check_plan(plan, with_alloc(st, other)) == []


def test_update_of_vanished_allocation_conflicts() -> None:
    st = state([], [app("s", svc("w"))])
    plan = run(st)
    pending = plan.place[0]
    st2 = with_alloc(ClusterState(2, {"id-n1": node("n1")}, st.apps, {}), pending)
    plan2 = run(st2)
    assert [u.id for u in plan2.update] == [pending.id]
    gone = ClusterState(3, st2.nodes, st2.apps, {})
    assert check_plan(plan2, gone) == [f"s.w[0]: allocation {pending.id} no longer exists"]
