"""``settlement``: the one definition of settled, failed and waiting."""

from __future__ import annotations

from dataclasses import replace

from elastin.model.cluster import Allocation, AllocStatus
from elastin.model.settled import settlement, workload_ready
from elastin.model.workload import Application, HealthCheck, Workload


def app() -> Application:
    return Application(
        "shop",
        (
            Workload("web", "service", replicas=2, health=HealthCheck(type="tcp")),
            Workload("report", "job", completions=1),
        ),
    )


def alloc(
    wl: str, i: int, status: AllocStatus, healthy: bool | None = None, reason: str = ""
) -> Allocation:
    t = "job" if wl == "report" else "service"
    return Allocation(
        f"{wl}{i}{status}", "shop", wl, i, type=t, status=status, healthy=healthy, reason=reason
    )


def test_settled_when_every_service_runs_healthy_and_every_job_is_done() -> None:
    allocs = [alloc("web", 0, "running", True), alloc("web", 1, "running", None)]
    s = settlement(app(), (), [*allocs, alloc("report", 0, "complete")])
    assert s.state == "settled" and s.done and s.summary == "web 2/2, report 1/1 done"
    s = settlement(app(), (), [*allocs, alloc("report", 0, "running")])
    assert s.state == "settling" and not s.waiting


def test_an_unhealthy_instance_keeps_it_settling_and_a_failure_fails_it() -> None:
    allocs = [alloc("web", 0, "running", True), alloc("web", 1, "running", False)]
    done = alloc("report", 0, "complete")
    assert settlement(app(), (), [*allocs, done]).state == "settling"
    allocs.append(alloc("web", 2, "failed"))
    assert settlement(app(), (), [*allocs, done]).state == "failed"


def test_a_job_that_failed_and_has_nothing_left_running_fails() -> None:
    web = [alloc("web", 0, "running"), alloc("web", 1, "running")]
    failed = alloc("report", 0, "failed")
    s = settlement(app(), (), [*web, failed])
    assert s.state == "failed" and s.workloads[1].state == "failed"
    retry = alloc("report", 0, "pending")  # the scheduler retries: settled, not failed
    assert settlement(app(), (), [*web, failed, retry]).state == "settled"


def test_waiting_when_everything_unsettled_is_pending_with_a_reason() -> None:
    stuck = [alloc("web", 0, "pending", reason="no node fits"), alloc("web", 1, "pending")]
    done = alloc("report", 0, "complete")
    assert not settlement(app(), (), [*stuck, done]).waiting
    stuck[1] = replace(stuck[1], reason="no node fits")
    assert settlement(app(), (), [*stuck, done]).waiting


def test_stopped_workloads_want_nothing_and_other_apps_do_not_count() -> None:
    other = replace(alloc("web", 0, "failed"), app="other")
    s = settlement(app(), ("web", "report"), [other])
    assert s.state == "settled" and [w.desired for w in s.workloads] == [0, 0]


def test_a_dependency_is_ready_when_one_instance_is_healthy_or_the_job_done() -> None:
    web, report = app().workloads
    assert not workload_ready(web, [alloc("web", 0, "running", None)])  # it has a check
    assert workload_ready(web, [alloc("web", 0, "running", True)])
    assert workload_ready(replace(web, health=None), [alloc("web", 0, "running", None)])
    assert not workload_ready(report, [alloc("report", 0, "running")])
    assert workload_ready(report, [alloc("report", 0, "complete")])
