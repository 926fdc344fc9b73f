"""Property tests: plans never over-commit, place only where feasible, preempt only across
the priority gap, converge (reconciling a committed plan again is empty), and the
accounting equals its formulas."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_support import GI, MI, new_id

from elastin.model.cluster import Allocation, Node
from elastin.model.resources import Resources
from elastin.model.workload import Application, Constraint, Workload
from elastin.scheduler import ClusterState, Plan, SchedulerOptions, apply_plan, schedule
from elastin.scheduler.accounting import resource_report
from elastin.scheduler.core import constraint_ok

nodes_st = st.lists(
    st.builds(
        lambda i, cpu, mem, vm, zone, ready: Node(
            id=f"n{i}",
            name=f"node-{i}",
            capacity=Resources(cpu, mem * GI, 50 * GI),
            drivers=("task", "container", "vm") if vm else ("task", "container"),
            attributes=(("zone", zone),),
            status="ready" if ready else "down",
        ),
        st.integers(0, 10_000),
        st.sampled_from([1000, 2000, 4000]),
        st.sampled_from([1, 2, 4]),
        st.booleans(),
        st.sampled_from(["a", "b"]),
        st.integers(0, 9).map(lambda x: x > 0),
    ),
    min_size=0,
    max_size=6,
    unique_by=lambda n: n.id,
)

workload_st = st.builds(
    lambda t, kind, cpu, mem, n, prio, zone, par, comp: Workload(
        name="w",
        type=t,
        kind=kind,
        resources=Resources(cpu, mem * MI, GI),
        replicas=n,
        priority=prio,
        constraints=(Constraint("zone", "==", zone),) if zone else (),
        parallelism=par,
        completions=comp,
        retries=1,
    ),
    st.sampled_from(["service", "service", "job"]),
    st.sampled_from(["task", "container", "vm"]),
    st.sampled_from([100, 300, 700, 1500]),
    st.sampled_from([64, 256, 1024, 3072]),
    st.integers(0, 4),
    st.sampled_from([10, 30, 50, 70, 90]),
    st.sampled_from(["", "", "a", "b"]),
    st.integers(1, 3),
    st.integers(1, 4),
)

apps_st = st.lists(st.lists(workload_st, min_size=1, max_size=3), min_size=1, max_size=3)


def build_apps(spec: list[list[Workload]]) -> dict[str, tuple[Application, dict[str, int]]]:
    out: dict[str, tuple[Application, dict[str, int]]] = {}
    for i, ws in enumerate(spec):
        named = tuple(replace(w, name=f"w{j}") for j, w in enumerate(ws))
        out[f"app{i}"] = (Application(f"app{i}", named), {w.name: 1 for w in named})
    return out


def holds(a: Allocation) -> bool:
    return bool(a.node_id) and a.desired == "run" and not a.terminal


def check_invariants(before: ClusterState, plan: Plan) -> ClusterState:
    after = apply_plan(before, plan)
    # no ready node over-committed
    used: dict[str, Resources] = {}
    for a in after.allocations.values():
        if holds(a):
            used[a.node_id] = used.get(a.node_id, Resources()) + a.resources
    for nid, u in used.items():
        n = after.nodes[nid]
        if n.status == "ready":
            assert u.fits_in(n.capacity), (n.name, u, n.capacity)
    # every placement feasible
    for a in [*plan.place, *plan.update]:
        if not a.node_id:
            assert a.reason
            continue
        n = before.nodes[a.node_id]
        w = before.apps[a.app][0].workload(a.workload)
        assert w is not None
        assert n.status == "ready" and a.kind in n.drivers
        assert all(constraint_ok(c, n.attrs()) for c in w.constraints)
    # preemption only across the gap
    placed = {a.id: a for a in [*plan.place, *plan.update]}
    for p in plan.preempt:
        preemptor = placed[p.by]
        victim = before.allocations[p.victim]
        assert victim.priority <= preemptor.priority - 10
        assert victim.node_id == preemptor.node_id
    return after


def describe(plan: Plan, again: Plan) -> str:
    def line(p: Plan) -> str:
        allocs = [
            (a.id, a.app, a.workload, a.index, a.priority, a.node_id, a.reason)
            for a in p.place + p.update
        ]
        return f"{p.summary()}: {allocs} stop={p.stop} preempt={p.preempt}"

    return f"first {line(plan)}\nagain {line(again)}"


def agent_pass(st_: ClusterState, rng: random.Random) -> ClusterState:
    """What agents might report: placed instances run, complete or fail."""
    allocs = dict(st_.allocations)
    for a in st_.allocations.values():
        if holds(a):
            status = rng.choice(["running", "running", "running", "complete", "failed"])
            if a.type == "service" and status == "complete":
                status = "running"
            allocs[a.id] = replace(a, status=status)  # type: ignore[arg-type]
    return ClusterState(st_.revision + 1, st_.nodes, st_.apps, allocs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=nodes_st,
    first=apps_st,
    second=apps_st,
    seed=st.integers(0, 1000),
    spread=st.booleans(),
    preemption=st.booleans(),
    down=st.integers(0, 5),
)
def test_plans_are_safe_and_converge(
    nodes: list[Node],
    first: list[list[Workload]],
    second: list[list[Workload]],
    seed: int,
    spread: bool,
    preemption: bool,
    down: int,
) -> None:
    options = SchedulerOptions(algorithm="spread" if spread else "binpack", preemption=preemption)
    rng = random.Random(seed)
    state = ClusterState(1, {n.id: n for n in nodes}, build_apps(first), {})
    for step in range(3):
        plan = schedule(state, options, rng, new_id)
        state = check_invariants(state, plan)
        again = schedule(state, options, rng, new_id)
        assert again.is_empty(), describe(plan, again)
        state = agent_pass(state, rng)
        if step == 0:
            # new and changed applications arrive (higher priorities may preempt)
            apps = dict(state.apps)
            for name, (app, versions) in build_apps(second).items():
                apps[f"x{name}"] = (replace(app, name=f"x{name}"), versions)
            state = ClusterState(state.revision, state.nodes, apps, state.allocations)
        if step == 1 and nodes:
            victim = nodes[down % len(nodes)]
            node_map = {**state.nodes, victim.id: replace(victim, status="down")}
            state = ClusterState(state.revision, node_map, state.apps, state.allocations)


@settings(max_examples=100, deadline=None)
@given(nodes=nodes_st, apps=apps_st, seed=st.integers(0, 100))
def test_accounting_equals_formulas(
    nodes: list[Node], apps: list[list[Workload]], seed: int
) -> None:
    state = ClusterState(1, {n.id: n for n in nodes}, build_apps(apps), {})
    state = apply_plan(state, schedule(state, SchedulerOptions(), random.Random(seed), new_id))
    report = resource_report(state)
    for k in report.kinds:
        expected = Resources()
        for app, _ in state.apps.values():
            for w in app.workloads:
                if w.kind == k.kind:
                    expected = expected + w.resources * w.instances
        assert k.requested == expected
        allocated = Resources()
        for a in state.allocations.values():
            if holds(a) and a.kind == k.kind:
                allocated = allocated + a.resources
        assert k.allocated == allocated
    total = Resources()
    for n in report.nodes:
        assert n.free == n.capacity - n.allocated
        total = total + n.allocated
    assert sum((k.allocated for k in report.kinds), Resources()) == total
