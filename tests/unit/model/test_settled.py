"""``settlement``: the one definition of settled, failed and waiting, counting only the
current version; and ``workload_ready`` for dependencies."""

from __future__ import annotations

from dataclasses import replace

from elastin.model.cluster import Allocation, AllocStatus
from elastin.model.rollout import Revision
from elastin.model.settled import Settlement, settlement, workload_ready
from elastin.model.workload import Application, HealthCheck, UpdatePolicy, Workload

NOW = 1000.0


def app() -> Application:
    return Application(
        "shop",
        (
            Workload("web", "service", replicas=2, health=HealthCheck(type="tcp")),
            Workload("report", "job", completions=1, retries=3),
        ),
    )


def alloc(
    wl: str,
    i: int,
    status: AllocStatus,
    healthy: bool | None = None,
    reason: str = "",
    version: int = 1,
    ready_for: float = 60.0,
    **kw: object,
) -> Allocation:
    t = "job" if wl == "report" else "service"
    ready_at = NOW - ready_for if status == "running" and healthy is not False else 0.0
    alloc_id = str(kw.pop("id", f"{wl}{i}{status}{version}"))
    return Allocation(
        alloc_id,
        "shop",
        wl,
        i,
        type=t,
        status=status,
        healthy=healthy,
        reason=reason,
        spec_version=version,
        ready_at=ready_at,
        **kw,  # type: ignore[arg-type]
    )


def settle(
    allocs: list[Allocation],
    a: Application | None = None,
    stopped: tuple[str, ...] = (),
    versions: dict[str, int] | None = None,
    history: dict[str, tuple[Revision, ...]] | None = None,
    **kw: int,
) -> Settlement:
    a = a or app()
    versions = versions or {"web": 1, "report": 1}
    if history is None:  # each current version made 10 s ago, its rollout still going on
        history = {w.name: (Revision(versions[w.name], w, NOW - 10),) for w in a.workloads}
    return settlement(a, stopped, allocs, versions=versions, history=history, now=NOW, **kw)


WEB_UP = [alloc("web", 0, "running", True), alloc("web", 1, "running", True)]


def test_settled_when_every_service_runs_ready_and_every_job_is_done() -> None:
    s = settle([*WEB_UP, alloc("report", 0, "complete")])
    assert s.state == "settled" and s.done and s.summary == "web 2/2, report 1/1 done"
    s = settle([*WEB_UP, alloc("report", 0, "running")])
    assert s.state == "settling" and not s.waiting


def test_an_unhealthy_instance_keeps_it_settling_and_a_failure_fails_it() -> None:
    allocs = [alloc("web", 0, "running", True), alloc("web", 1, "running", False)]
    done = alloc("report", 0, "complete")
    assert settle([*allocs, done]).state == "settling"
    allocs[1] = alloc("web", 1, "failed", reason="exited with code 1")
    s = settle([*allocs, done])
    assert s.state == "failed" and "exited with code 1" in s.workloads[0].reason


def test_a_service_without_a_check_settles_only_after_min_healthy_time() -> None:
    plain = Application("shop", (Workload("web", "service", replicas=1),))
    young = alloc("web", 0, "running", ready_for=1.0)
    assert settle([young], plain).state == "settling"
    assert settle([alloc("web", 0, "running", ready_for=10.0)], plain).state == "settled"


def test_a_crash_looping_or_oom_killed_service_without_a_check_fails() -> None:
    plain = Application("shop", (Workload("web", "service", replicas=1),))
    looping = alloc("web", 0, "starting", restarts=3, reason="OOM killed")
    s = settle([looping], plain)
    assert s.state == "failed" and "restarted 3 time(s) (OOM killed)" in s.workloads[0].reason


def test_a_job_failing_every_attempt_is_not_settled_then_fails_naming_it() -> None:
    web = WEB_UP
    first = alloc("report", 0, "failed", reason="exited with code 2")
    retry = alloc("report", 0, "pending", attempt=1)
    assert settle([*web, first, retry]).state == "settling"  # a failed attempt is not the end
    fails = [
        replace(first, id=f"f{i}", updated_at=float(i), reason=f"exited with code {i}")
        for i in range(4)
    ]
    s = settle([*web, *fails])
    assert s.state == "failed" and s.workloads[1].state == "failed"
    assert "4 run(s) failed (3 retries): exited with code 3" in s.workloads[1].reason


def test_only_the_current_version_counts() -> None:
    old_fail = [alloc("report", 0, "failed", version=1, id=f"old{i}") for i in range(4)]
    new_ok = alloc("report", 0, "complete", version=2)
    s = settle([*WEB_UP, *old_fail, new_ok], versions={"web": 1, "report": 2})
    assert s.state == "settled"
    old_done = alloc("report", 0, "complete", version=1)
    s = settle([*WEB_UP, old_done], versions={"web": 1, "report": 2})
    assert s.state == "settling"  # the new run has not run yet: the old one is history
    old_web = alloc("web", 1, "running", True, version=1)
    new_web = [alloc("web", i, "running", True, version=2) for i in range(2)]
    s = settle([*new_web, old_web, new_ok], versions={"web": 2, "report": 2})
    assert s.state == "settling"  # an old instance is still there: the rollout goes on


def test_a_rolled_back_version_fails_the_wait_that_made_it_and_only_that_one() -> None:
    web = app().workloads[0]
    history = {
        "web": (
            Revision(1, web, 0.0, state="stable", generation=1),
            Revision(
                2, web, 1.0, state="failed", message="0 of 2 ready", reverted_to=1, generation=2
            ),
        ),
        "report": (Revision(1, app().workloads[1], 0.0, state="stable"),),
    }
    up = [*WEB_UP, alloc("report", 0, "complete")]
    s = settle(up, history=history, from_generation=2)  # the apply that made version 2
    assert s.state == "failed"
    assert s.workloads[0].reason == "version 2 failed: 0 of 2 ready; rolled back to version 1"
    assert settle(up, history=history, from_generation=3).state == "settled"  # a later change
    assert settle(up, history=history).state == "settled"  # the current version is fine


def test_a_proven_version_short_of_instances_settles_later_never_fails() -> None:
    web = app().workloads[0]
    history = {
        "web": (Revision(1, web, 0.0, state="stable"),),  # long past its deadline
        "report": (Revision(1, app().workloads[1], 0.0, state="stable"),),
    }
    scaled = Application("shop", (replace(web, replicas=3), app().workloads[1]))
    looping = alloc("web", 2, "starting", restarts=5)
    s = settle([*WEB_UP, looping, alloc("report", 0, "complete")], scaled, history=history)
    assert s.state == "settling"


def test_waiting_when_everything_unsettled_is_pending_with_a_reason() -> None:
    stuck = [alloc("web", 0, "pending", reason="no node fits"), alloc("web", 1, "pending")]
    done = alloc("report", 0, "complete")
    assert not settle([*stuck, done]).waiting
    stuck[1] = replace(stuck[1], reason="no node fits")
    assert settle([*stuck, done]).waiting


def test_stopped_workloads_want_nothing_and_other_apps_do_not_count() -> None:
    other = replace(alloc("web", 0, "failed"), app="other")
    s = settle([other], stopped=("web", "report"))
    assert s.state == "settled" and [w.desired for w in s.workloads] == [0, 0]


def test_a_dependency_is_ready_when_one_instance_is_healthy_or_the_job_done() -> None:
    web, report = app().workloads
    assert not workload_ready(web, [alloc("web", 0, "running", None)])  # it has a check
    assert workload_ready(web, [alloc("web", 0, "running", True)])
    assert workload_ready(replace(web, health=None), [alloc("web", 0, "running", None)])
    assert not workload_ready(report, [alloc("report", 0, "running")])
    assert workload_ready(report, [alloc("report", 0, "complete")])


def test_a_canary_is_judged_until_ready_and_the_rest_counts_from_promotion() -> None:
    w = replace(app().workloads[0], update=UpdatePolicy(canary=1, healthy_deadline=60))
    a = Application("shop", (w,))
    old = [alloc("web", i, "running", True, version=1, id=f"o{i}") for i in range(2)]
    sick = alloc("web", 0, "running", False, version=2)
    made = {"web": (Revision(1, w, 0.0, state="stable"), Revision(2, w, NOW - 100))}
    s = settle([*old, sick], a, versions={"web": 2}, history=made)
    assert s.state == "failed" and "ready after 60s" in s.workloads[0].reason  # never ready
    canary = alloc("web", 0, "running", True, version=2)
    s = settle([*old, canary], a, versions={"web": 2}, history=made)
    assert s.state == "settled" and "rollout promote web" in s.workloads[0].reason
    promoted = {"web": (made["web"][0], replace(made["web"][1], promoted_at=NOW))}
    s = settle([*old, canary], a, versions={"web": 2}, history=promoted)
    assert s.state == "settling"  # long after it was made, but just promoted
