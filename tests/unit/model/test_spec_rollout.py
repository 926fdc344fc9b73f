"""A service's ``update:`` block (its rollouts) and a job's ``retry_delay``: parsed into the
model's ``UpdatePolicy`` and ``Workload.retry_delay``, percentages resolved as Kubernetes
does, and every mistake located and explained like the rest of the spec."""

from __future__ import annotations

import pytest

from elastin.model.errors import SpecError, SpecIssue
from elastin.model.spec import parse_spec
from elastin.model.workload import UpdatePolicy, Workload

SERVICE = "app: a\nservices:\n  web:\n    command: x\n    replicas: {replicas}\n"
JOB = "app: a\njobs:\n  batch:\n    command: x\n"


def service(update: str, replicas: int = 4) -> Workload:
    app = parse_spec(SERVICE.format(replicas=replicas) + f"    update: {update}\n", file="t.yaml")
    return app.workloads[0]


def issues(text: str) -> list[SpecIssue]:
    with pytest.raises(SpecError) as err:
        parse_spec(text, file="t.yaml")
    return err.value.issues


def one(text: str) -> SpecIssue:
    found = issues(text)
    assert len(found) == 1, [i.render() for i in found]
    return found[0]


def test_defaults_never_take_a_service_below_its_replicas() -> None:
    web = parse_spec(SERVICE.format(replicas=2), file="t.yaml").workloads[0]
    assert web.update == UpdatePolicy(
        max_surge=1,
        max_unavailable=0,
        min_healthy_time=5.0,
        healthy_deadline=300.0,
        auto_revert=True,
        canary=0,
    )


def test_every_field() -> None:
    web = service(
        "{max_surge: 2, max_unavailable: 1, min_healthy_time: 10s, healthy_deadline: 2m, "
        "auto_revert: false, canary: 1}"
    )
    assert web.update == UpdatePolicy(2, 1, 10.0, 120.0, False, 1)


@pytest.mark.parametrize(
    ("replicas", "surge", "unavailable", "expected"),
    [
        (4, '"25%"', '"25%"', (1, 1)),
        (10, '"25%"', '"25%"', (3, 2)),  # surge rounds up, unavailable down (Kubernetes)
        (3, '"50%"', '"50%"', (2, 1)),
        (5, '"100%"', '"0%"', (5, 0)),
        (2, '"0%"', '"10%"', (0, 1)),  # rounded to nothing: one may go, as Kubernetes does
        (10, "1", '"30%"', (1, 3)),
    ],
)
def test_percentages_of_replicas_are_resolved(
    replicas: int, surge: str, unavailable: str, expected: tuple[int, int]
) -> None:
    web = service(f"{{max_surge: {surge}, max_unavailable: {unavailable}}}", replicas)
    assert (web.update.max_surge, web.update.max_unavailable) == expected


@pytest.mark.parametrize(
    ("update", "path", "words"),
    [
        ("{max_surge: 0}", "max_surge", "both 0"),
        ("{max_surge: 0, max_unavailable: 0}", "max_surge", "both 0"),
        ('{max_surge: "0%", max_unavailable: 0}', "max_surge", "both 0"),
        ("{max_surge: -1}", "max_surge", "out of range"),
        ('{max_surge: "120%"}', "max_surge", "neither a count nor a percentage"),
        ("{max_unavailable: lots}", "max_unavailable", "neither a count nor a percentage"),
        ("{max_unavailable: 1.5}", "max_unavailable", "whole number"),
        ("{min_healthy_time: soon}", "min_healthy_time", "not a duration"),
        ("{healthy_deadline: 5s}", "healthy_deadline", "longer than min_healthy_time"),
        ("{min_healthy_time: 10m}", "healthy_deadline", "longer than min_healthy_time"),
        ("{min_healthy_time: 30s, healthy_deadline: 30s}", "healthy_deadline", "longer than"),
        ("{auto_revert: maybe}", "auto_revert", "true or false"),
        ("{canary: 5}", "canary", "out of range"),
        ("{canary: -1}", "canary", "out of range"),
        ("{canari: 1}", "canari", "did you mean 'canary'"),
        ("fast", "", "must be a mapping"),
    ],
)
def test_mistakes_in_update_are_located_and_explained(update: str, path: str, words: str) -> None:
    issue = one(SERVICE.format(replicas=4) + f"    update: {update}\n")
    assert issue.path == "services.web.update" + (f".{path}" if path else "")
    assert (issue.file, issue.line) == ("t.yaml", 6)
    assert words in issue.render(), issue.render()
    assert issue.hint


def test_update_on_a_job_is_refused_with_what_jobs_use() -> None:
    issue = one(JOB + "    update: {max_surge: 1}\n")
    assert issue.path == "jobs.batch.update" and (issue.line, issue.column) == (5, 5)
    assert issue.message == "update: applies to services; jobs use retries/retry_delay"


def test_retry_delay_on_a_service_is_refused_with_what_services_use() -> None:
    issue = one(SERVICE.format(replicas=1) + "    retry_delay: 2s\n")
    assert issue.path == "services.web.retry_delay"
    assert "restart" in issue.message and "backoff" in issue.hint


def test_a_jobs_retry_delay() -> None:
    assert parse_spec(JOB, file="t.yaml").workloads[0].retry_delay == 1.0
    job = parse_spec(JOB + "    retry_delay: 500ms\n    retries: 4\n").workloads[0]
    assert job.retry_delay == 0.5
    assert [job.retry_wait(n) for n in range(4)] == [0.0, 0.5, 1.0, 2.0]
    for bad, words in (("soon", "not a duration"), ("2h", "too long"), ("-1", "not a duration")):
        issue = one(JOB + f"    retry_delay: {bad}\n")
        assert issue.path == "jobs.batch.retry_delay" and words in issue.message, issue.render()


def test_every_problem_at_once() -> None:
    found = issues(
        SERVICE.format(replicas=2)
        + "    update: {max_surge: 0, canary: 3, auto_revert: 1}\n"
        + "jobs:\n  j:\n    command: x\n    update: {}\n    retry_delay: x\n"
    )
    assert [i.path for i in found] == [
        "services.web.update.max_surge",
        "services.web.update.canary",
        "services.web.update.auto_revert",
        "jobs.j.update",
        "jobs.j.retry_delay",
    ]


def test_replicas_on_a_job_says_what_jobs_use() -> None:
    issue = one(JOB + "    replicas: 3\n")
    assert issue.path == "jobs.batch.replicas"
    assert issue.message == "replicas applies to services; jobs use completions/parallelism"
