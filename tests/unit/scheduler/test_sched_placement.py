"""Feasibility (drivers, constraints, resources), ranking, sampling and options."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from sched_support import app, node, run, settle, state, svc, with_alloc

from elastin.model.cluster import Allocation
from elastin.model.resources import Resources
from elastin.model.workload import Constraint
from elastin.scheduler import InvalidOptions, SchedulerError, SchedulerOptions
from elastin.scheduler.core import constraint_ok


@pytest.mark.parametrize(
    ("op", "value", "zone", "ok"),
    [
        ("==", "a", "a", True),
        ("==", "a", "b", False),
        ("!=", "a", "b", True),
        ("!=", "a", "a", False),
        ("in", ("a", "b"), "b", True),
        ("in", ("a", "b"), "c", False),
        ("not_in", ("a", "b"), "c", True),
        ("not_in", ("a", "b"), "a", False),
    ],
)
def test_constraint_ops(op: str, value: str | tuple[str, ...], zone: str, ok: bool) -> None:
    c = Constraint("zone", op, value)  # type: ignore[arg-type]
    assert constraint_ok(c, {"zone": zone}) is ok


def test_constraints_select_nodes_and_explain() -> None:
    w = svc("web", replicas=4, constraints=(Constraint("zone", "==", "b"),))
    st = state([node("n1", zone="a"), node("n2", zone="b")], [app("s", w)])
    plan = run(st)
    assert {a.node_id for a in plan.place} == {"id-n2"}
    w2 = svc("web", constraints=(Constraint("node.name", "in", ("zz",)),))
    plan = run(state([node("n1")], [app("s", w2)]))
    assert "no node satisfies the constraints" in plan.place[0].reason
    assert "1 node fails the constraint node.name in [zz]" in plan.place[0].reason


def test_down_node_and_missing_driver_are_infeasible() -> None:
    st = state(
        [node("n1", status="down"), node("n2", drivers=("task",)), node("n3")],
        [app("s", svc("c", replicas=3, kind="container"))],
    )
    assert {a.node_id for a in run(st).place} == {"id-n3"}


def test_only_live_run_allocations_hold_resources() -> None:
    n = node("n1", cpu=1000)
    st = state([n], [app("s", svc("web", cpu=600)), app("other", svc("w", replicas=1))])
    base = Allocation(
        id="x",
        app="other",
        workload="w",
        index=0,
        node_id="id-n1",
        resources=Resources(600, 0, 0),
        status="running",
        spec_version=1,
    )
    for holder, fits in [
        (base, False),
        (replace(base, desired="stop"), True),
        (replace(base, status="complete"), True),
        (replace(base, status="failed"), True),
        (replace(base, status="starting"), False),
    ]:
        placed = run(with_alloc(st, holder)).place[0]
        assert bool(placed.node_id) is fits, holder


def test_placements_of_one_pass_add_up() -> None:
    st = state([node("n1", cpu=1000)], [app("s", svc("web", replicas=3, cpu=400))])
    plan = run(st, SchedulerOptions(preemption=False))
    assert sum(1 for a in plan.place if a.node_id) == 2
    assert sum(1 for a in plan.place if not a.node_id) == 1


def test_binpack_prefers_fuller_and_spread_emptier() -> None:
    st = state(
        [node("full", cpu=4000), node("empty", cpu=4000)],
        [app("s", svc("w")), app("o", svc("x", replicas=1, cpu=2000, mem_mi=4096))],
    )
    busy = Allocation(
        id="b",
        app="o",
        workload="x",
        index=0,
        node_id="id-full",
        resources=Resources(2000, 4 << 30, 0),
        status="running",
        spec_version=1,
    )
    st = with_alloc(st, busy)
    assert run(st, SchedulerOptions(algorithm="binpack")).place[0].node_id == "id-full"
    assert run(st, SchedulerOptions(algorithm="spread")).place[0].node_id == "id-empty"


def test_spread_and_anti_affinity_separate_replicas() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    st = state(nodes, [app("s", svc("w", replicas=4, cpu=100, mem_mi=64))])
    plan = run(st, SchedulerOptions(algorithm="spread"))
    assert len({a.node_id for a in plan.place}) == 4
    # binpack still avoids doubling up while the fill difference is small
    plan = run(st, SchedulerOptions(algorithm="binpack", limit=4))
    assert len({a.node_id for a in plan.place}) == 4


def test_sampling_is_deterministic_for_a_seed() -> None:
    nodes = [node(f"n{i}") for i in range(50)]
    st = state(nodes, [app("s", svc("w", replicas=20, cpu=100, mem_mi=64))])
    a = [x.node_id for x in run(st, seed=3).place]
    b = [x.node_id for x in run(st, seed=3).place]
    assert a == b


def test_infeasible_cache_still_sees_room_freed_by_preemption() -> None:
    # two high-priority replicas; each must evict one low-priority allocation
    st = settle(
        state([node("n1", cpu=1000)], [app("low", svc("l", replicas=2, cpu=500, priority=10))])
    )
    st = state(
        list(st.nodes.values()),
        [
            app("low", svc("l", replicas=2, cpu=500, priority=10)),
            app("hi", svc("h", 2, cpu=500, priority=90)),
        ],
        st.allocations.values(),
    )
    plan = run(st)
    assert len(plan.preempt) == 2
    assert all(a.node_id == "id-n1" for a in plan.place if a.app == "hi")


def test_options() -> None:
    assert SchedulerOptions().candidate_limit(10_000) == 14
    assert SchedulerOptions().candidate_limit(1) == 2
    assert SchedulerOptions(limit=5).candidate_limit(10_000) == 5
    with pytest.raises(InvalidOptions, match="binpack"):
        SchedulerOptions(algorithm="fifo")  # type: ignore[arg-type]
    with pytest.raises(SchedulerError):
        SchedulerOptions(limit=-1)


def test_memory_units_in_reason() -> None:
    st = state([node("n1", mem_gi=1)], [app("s", svc("w", mem_mi=2048))])
    assert (
        run(st).place[0].reason.startswith("no node has 2Gi memory free (largest free: 1Gi on n1)")
    )


def test_static_ports_allow_one_instance_per_node() -> None:
    from elastin.model.cluster import Node
    from elastin.model.resources import Resources
    from elastin.model.workload import Application, Port, Workload
    from elastin.scheduler import ClusterState, SchedulerOptions, apply_plan, schedule

    nodes = {
        n: Node(id=n, name=n, capacity=Resources(8000, 16 << 30, 100 << 30)) for n in ("a", "b")
    }
    w = Workload(name="web", command=("x",), replicas=3, ports=(Port("http", 8080),))
    state = ClusterState(
        revision=1,
        nodes=nodes,
        apps={"shop": (Application("shop", (w,)), {"web": 1})},
        allocations={},
    )
    ids = iter(range(100))
    plan = schedule(state, SchedulerOptions(), random.Random(1), lambda: f"id{next(ids)}")
    placed = [a for a in plan.place if a.node_id]
    pending = [a for a in plan.place if not a.node_id]
    assert sorted(a.node_id for a in placed) == ["a", "b"]
    assert len(pending) == 1 and "port 8080" in pending[0].reason
    # a workload on any free port (0) is not limited
    w0 = Workload(name="web", command=("x",), replicas=3, ports=(Port("http", 0),))
    state0 = ClusterState(
        revision=1,
        nodes=nodes,
        apps={"shop": (Application("shop", (w0,)), {"web": 1})},
        allocations={},
    )
    plan0 = schedule(state0, SchedulerOptions(), random.Random(1), lambda: f"id{next(ids)}")
    assert all(a.node_id for a in plan0.place)
    # reconciling the committed plan again changes nothing
    after = apply_plan(state, plan)
    again = schedule(after, SchedulerOptions(), random.Random(2), lambda: f"id{next(ids)}")
    assert not again.place
