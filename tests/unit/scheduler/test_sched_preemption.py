"""Preemption: who may be evicted, which set is chosen, and how the plan says it."""

from __future__ import annotations

from sched_support import app, node, run, state, svc

from elastin.model.cluster import Allocation
from elastin.model.resources import Resources
from elastin.scheduler import ClusterState, SchedulerOptions


def filled(*victims: tuple[str, int, int], cpu: int = 1000) -> list[Allocation]:
    """Running allocations of app 'low' on node n1: (workload, priority, cpu)."""
    return [
        Allocation(
            id=f"v-{w}",
            app="low",
            workload=w,
            index=0,
            node_id="id-n1",
            resources=Resources(c, 0, 0),
            priority=p,
            spec_version=1,
            status="running",
        )
        for w, p, c in victims
    ]


def cluster(victims: list[Allocation], want_cpu: int, priority: int) -> ClusterState:
    low = app(
        "low",
        *(svc(a.workload, cpu=a.resources.cpu, mem_mi=0, priority=a.priority) for a in victims),
    )
    hi = app("hi", svc("urgent", cpu=want_cpu, mem_mi=0, priority=priority))
    return state([node("n1", cpu=1000)], [low, hi], victims)


def test_high_priority_preempts_and_names_the_preemptor() -> None:
    st = cluster(filled(("a", 20, 500), ("b", 20, 500)), 500, 60)
    plan = run(st)
    (new,) = [a for a in plan.place if a.app == "hi"]
    assert new.node_id == "id-n1"
    # the evicted instance gets a replacement in the same plan (pending: no room left)
    (again,) = [a for a in plan.place if a.app == "low"]
    assert again.node_id == "" and f"v-{again.workload}" == plan.preempt[0].victim
    (p,) = plan.preempt
    assert p.victim in ("v-a", "v-b") and p.by == new.id
    assert f"allocation {new.id}" in p.reason and "hi.urgent[0]" in p.reason
    assert "priority 60" in p.reason


def test_gap_below_ten_never_preempts() -> None:
    st = cluster(filled(("a", 51, 1000)), 500, 60)
    plan = run(st)
    assert not plan.preempt and plan.place[0].node_id == ""
    assert "even after preempting allocations of priority <= 50" in plan.place[0].reason
    st = cluster(filled(("a", 50, 1000)), 500, 60)
    assert [p.victim for p in run(st).preempt] == ["v-a"]


def test_preemption_can_be_turned_off() -> None:
    st = cluster(filled(("a", 10, 1000)), 500, 90)
    plan = run(st, SchedulerOptions(preemption=False))
    assert not plan.preempt and plan.place[0].node_id == ""


def test_lowest_priority_then_fewest_victims() -> None:
    st = cluster(filled(("a", 30, 400), ("b", 10, 300), ("c", 10, 300)), 600, 90)
    assert sorted(p.victim for p in run(st).preempt) == ["v-b", "v-c"]
    # one big victim of the lowest priority beats two small ones
    st = cluster(filled(("a", 10, 600), ("b", 10, 200), ("c", 10, 200)), 600, 90)
    assert [p.victim for p in run(st).preempt] == ["v-a"]


def test_unneeded_victims_are_put_back() -> None:
    # lowest priority first takes a then b; a is not needed once b is gone, so it stays
    st = cluster(filled(("a", 10, 100), ("b", 20, 900)), 900, 90)
    assert [p.victim for p in run(st).preempt] == ["v-b"]


def test_allocations_placed_in_the_same_pass_are_not_victims() -> None:
    low = app("low", svc("l", cpu=1000, mem_mi=0, priority=10))
    hi = app("hi", svc("h", cpu=1000, mem_mi=0, priority=90))
    plan = run(state([node("n1", cpu=1000)], [low, hi]))
    placed = {a.app: a.node_id for a in plan.place}
    assert placed == {"hi": "id-n1", "low": ""}  # the higher priority went first
    assert not plan.preempt
