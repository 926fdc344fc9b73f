"""Rolling updates in the pure reconcile: surge, availability, readiness, stop-first, canaries,
and job retries carrying their attempt."""

from __future__ import annotations

from dataclasses import replace

from sched_support import app, node, run, svc

from elastin.model.cluster import Allocation
from elastin.model.workload import Port, UpdatePolicy, Workload
from elastin.scheduler import ClusterState

NOW = 1000.0


def running(w: Workload, index: int, version: int, ready_for: float = 60.0) -> Allocation:
    return Allocation(
        f"{w.name}-v{version}-{index}",
        "shop",
        w.name,
        index,
        node_id="id-n1",
        resources=w.resources,
        spec_version=version,
        status="running",
        ready_at=NOW - ready_for,
    )


def world(
    w: Workload, allocs: list[Allocation], version: int = 2, held: bool = False
) -> ClusterState:
    return ClusterState(
        1,
        {"id-n1": node("n1", cpu=64000, mem_gi=64)},
        {"shop": (app("shop", w), {w.name: version})},
        {a.id: a for a in allocs},
        now=NOW,
        held=frozenset({("shop", w.name)}) if held else frozenset(),
    )


def test_a_new_version_starts_beside_the_old_ones_and_stops_none_until_ready() -> None:
    w = svc("web", replicas=2)
    old = [running(w, 0, 1), running(w, 1, 1)]
    plan = run(world(w, old))
    assert [(a.index, a.spec_version) for a in plan.place] == [(0, 2)]  # max_surge 1
    assert plan.stop == []  # max_unavailable 0: both old ones keep serving
    # the new one runs but is not ready yet (min_healthy_time): still nothing stops
    young = running(w, 0, 2, ready_for=1.0)
    plan = run(world(w, [*old, young]))
    assert plan.stop == [] and plan.place == []


def test_a_ready_new_instance_lets_the_old_one_at_its_index_go_and_the_next_start() -> None:
    w = svc("web", replicas=2)
    old = [running(w, 0, 1), running(w, 1, 1)]
    new0 = running(w, 0, 2)
    plan = run(world(w, [*old, new0]))
    assert [i for i, _ in plan.stop] == [old[0].id]
    assert "spec changed (version 1 -> 2); replaced" in plan.stop[0][1]
    # the stopped one no longer counts: the surge lets index 1 start in the same pass
    assert [(a.index, a.spec_version) for a in plan.place] == [(1, 2)]


def test_a_new_version_that_never_becomes_ready_never_takes_an_old_instance_down() -> None:
    w = svc("web", replicas=2)
    old = [running(w, 0, 1), running(w, 1, 1)]
    crashing = replace(running(w, 0, 2), status="starting", ready_at=0.0, restarts=2)
    failed = replace(running(w, 0, 2), id="web-v2-f", status="failed", ready_at=0.0)
    for new in (crashing, failed):
        plan = run(world(w, [*old, new]))
        assert plan.stop == [] and plan.place == []


def test_old_instances_that_do_not_serve_are_replaced_at_once() -> None:
    w = svc("web", replicas=2)
    sick = replace(running(w, 1, 1), healthy=False)
    plan = run(world(w, [running(w, 0, 1), sick]))
    assert [i for i, _ in plan.stop] == [sick.id] and "not serving" in plan.stop[0][1]
    assert sorted(a.index for a in plan.place) == [0, 1]  # 1 serving + surge 1 + the freed one


def test_a_fixed_port_service_is_replaced_stop_first_and_never_races_for_the_port() -> None:
    w = svc("web", replicas=2, ports=(Port("http", 8080),))
    old = [running(w, 0, 1), running(w, 1, 1)]
    plan = run(world(w, old))
    assert len(plan.stop) == 1 and plan.place == []  # one unavailable, no surge
    stopping = replace(old[1], desired="stop")  # still draining: the port is still held
    plan = run(world(w, [old[0], stopping]))
    assert plan.place == [] and plan.stop == []
    gone = replace(stopping, status="stopped")
    plan = run(world(w, [old[0], gone]))
    assert [(a.index, a.spec_version) for a in plan.place] == [(0, 2)] or [
        (a.index, a.spec_version) for a in plan.place
    ] == [(1, 2)]


def test_more_surge_and_unavailability_move_faster() -> None:
    w = svc("web", replicas=4, update=UpdatePolicy(max_surge=2, max_unavailable=1))
    old = [running(w, i, 1) for i in range(4)]
    plan = run(world(w, old))
    assert len(plan.place) == 3 and len(plan.stop) == 1  # 6 live at most, 3 available at least


def test_canaries_wait_for_promotion_then_the_rollout_goes_on() -> None:
    w = svc("web", replicas=3, update=UpdatePolicy(canary=1))
    old = [running(w, i, 1) for i in range(3)]
    plan = run(world(w, old, held=True))
    assert [(a.index, a.spec_version) for a in plan.place] == [(0, 2)] and plan.stop == []
    canary = running(w, 0, 2)
    plan = run(world(w, [*old, canary], held=True))
    assert plan.place == [] and plan.stop == []  # ready, but not promoted
    plan = run(world(w, [*old, canary]))  # promoted
    assert [i for i, _ in plan.stop] == [old[0].id]


def test_a_job_retry_carries_its_attempt() -> None:
    w = Workload("report", "job", completions=1, retries=3)
    failed = [
        Allocation(f"r{i}", "shop", "report", 0, type="job", spec_version=2, status="failed")
        for i in range(2)
    ]
    plan = run(world(w, failed))
    (retry,) = plan.place
    assert retry.attempt == 2 and retry.spec_version == 2


def test_a_failed_new_instance_stops_no_old_one_even_with_room_to() -> None:
    w = svc("web", replicas=3, update=UpdatePolicy(max_unavailable=1))
    old = [running(w, i, 1) for i in range(3)]
    failed = replace(running(w, 0, 2), status="failed", ready_at=0.0)
    plan = run(world(w, [*old, failed]))
    assert plan.stop == [] and plan.place == []  # it is rolled back; the old ones stay


def test_old_failures_do_not_hold_a_slot_once_the_version_is_current_again() -> None:
    w = svc("web", replicas=3)
    up = [running(w, 0, 2), running(w, 1, 2)]
    failed = replace(running(w, 2, 2), id="f", status="failed", ready_at=0.0, updated_at=NOW - 50)
    st = world(w, [*up, failed])
    assert run(st).place == []  # a failure of the current version holds its slot
    fresh = ClusterState(
        st.revision, st.nodes, st.apps, st.allocations, now=NOW, since={("shop", "web"): NOW - 5}
    )
    (again,) = run(fresh).place  # since it became current again (or was scaled): tried again
    assert again.index == 2
