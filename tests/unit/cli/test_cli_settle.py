"""``up`` and ``apply --wait`` wait on the server's blocking settlement query: a scripted
sequence of answers, the progress lines they print and the exit codes (0 settled, 4 failed or
timed out)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import FakeApi
from click.testing import Result

from elastin.cli.deploy import SETTLE_WAIT, wait_settled

Run = Callable[..., Result]

SPEC = """app: t
services:
  web:
    command: ["python3", "-c", "pass"]
    resources: {cpu: 100m, memory: 32Mi}
    replicas: 2
"""
APPLIED = {"app": "t", "dry_run": False, "changes": []}
SETTLEMENT = "/v1/apps/t/settlement"


def answer(state: str, summary: str, index: int, waiting: bool = False) -> dict[str, Any]:
    return {
        "app": "t",
        "state": state,
        "summary": summary,
        "index": index,
        "waiting": waiting,
        "done": state != "settling",
        "workloads": [],
    }


@pytest.fixture
def spec(tmp_path: Path) -> str:
    p = tmp_path / "t.yaml"
    p.write_text(SPEC)
    return str(p)


def progress(res: Result) -> list[str]:
    return [line for line in res.stdout.splitlines() if line.startswith("  … ")]


def test_apply_wait_follows_the_answers_until_settled(api: FakeApi, run: Run, spec: str) -> None:
    api.on("POST", "/v1/apps", APPLIED)
    api.on(
        "GET",
        SETTLEMENT,
        answer("settling", "web 0/2", 5),
        answer("settling", "web 0/2", 6),  # something else changed: no new line
        answer("settling", "web 1/2", 8),
        answer("settling", "web 2/2", 9),  # running, but a health check fails
        answer("settled", "web 2/2", 10),
    )
    res = run("apply", spec, "--wait")
    assert res.exit_code == 0, res.output
    assert progress(res) == ["  … web 0/2", "  … web 1/2", "  … web 2/2"]
    sent = [r.url.params for r in api.sent("GET", SETTLEMENT)]
    assert [p["index"] for p in sent] == ["0", "5", "6", "8", "9"]  # each past the last answer
    assert all(0 < float(p["wait"]) <= SETTLE_WAIT for p in sent)


def test_apply_wait_exits_4_when_a_workload_failed(api: FakeApi, run: Run, spec: str) -> None:
    api.on("POST", "/v1/apps", APPLIED)
    api.on("GET", SETTLEMENT, answer("settling", "web 0/2", 3), answer("failed", "web 0/2", 4))
    res = run("apply", spec, "--wait")
    assert res.exit_code == 4
    assert "error: application 't' did not settle" in res.stderr
    assert "hint: see `elastin ps`" in res.stderr
    assert len(api.sent("GET", SETTLEMENT)) == 2


def test_apply_wait_exits_4_when_the_time_is_up(api: FakeApi, run: Run, spec: str) -> None:
    api.on("POST", "/v1/apps", APPLIED)
    api.on("GET", SETTLEMENT, answer("settled", "web 2/2", 3))
    res = run("apply", spec, "--wait", "--timeout", "0")
    assert res.exit_code == 4
    assert "did not settle" in res.stderr
    assert api.sent("GET", SETTLEMENT) == []


def test_apply_dry_run_does_not_wait(api: FakeApi, run: Run, spec: str) -> None:
    api.on("POST", "/v1/apps", {**APPLIED, "dry_run": True})
    assert run("apply", spec, "--wait", "--dry-run").exit_code == 0
    assert api.sent("GET", SETTLEMENT) == []


def test_up_with_a_running_server_applies_and_waits(api: FakeApi, run: Run, spec: str) -> None:
    api.on("POST", "/v1/apps", APPLIED)
    api.on("GET", SETTLEMENT, answer("settling", "web 1/2", 2), answer("settled", "web 2/2", 3))
    api.on("GET", "/v1/allocations", [])
    res = run("up", spec)
    assert res.exit_code == 0, res.output
    assert progress(res) == ["  … web 1/2"]
    assert "✓ t is up" in res.stdout
    assert api.sent("GET", "/v1/allocations")[0].url.params["app"] == "t"


def test_up_that_does_not_settle_shows_the_instances_and_exits_4(
    api: FakeApi, run: Run, spec: str
) -> None:
    api.on("POST", "/v1/apps", APPLIED)
    api.on("GET", SETTLEMENT, answer("failed", "web 0/2", 2))
    api.on("GET", "/v1/allocations", [])
    res = run("up", spec)
    assert res.exit_code == 4
    assert "✓" not in res.stdout
    assert "error: application 't' did not settle" in res.stderr
    assert "hint: see `elastin ps` and `elastin events`" in res.stderr
    assert len(api.sent("GET", "/v1/allocations")) == 1


def test_a_vanished_application_is_an_error_not_a_traceback(
    api: FakeApi, run: Run, spec: str
) -> None:
    api.on("POST", "/v1/apps", APPLIED)
    api.on("GET", SETTLEMENT, httpx.Response(404, json={"message": "no application named 't'"}))
    res = run("apply", spec, "--wait")
    assert res.exit_code == 1
    assert "error: no application named 't'" in res.stderr
    assert isinstance(res.exception, SystemExit)


class ServerTime:
    """A clock that the scripted server moves on by each query's ``wait`` (it blocked that
    long: nothing changed)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def blocked(self, request: httpx.Request) -> None:
        self.now += float(request.url.params["wait"])


def test_wait_ends_when_the_time_is_up_asking_for_what_remains() -> None:
    api, clock = FakeApi(), ServerTime()
    api.on_request = clock.blocked
    api.on("GET", SETTLEMENT, answer("settling", "web 1/2", 7))
    with api.client() as c:
        assert wait_settled(c, "t", 5.0, show=False, clock=clock) is False
    waits = [float(r.url.params["wait"]) for r in api.requests]
    assert waits == [SETTLE_WAIT, SETTLE_WAIT, 5.0 - 2 * SETTLE_WAIT]
    assert clock.now == 105.0


def test_wait_stops_at_once_when_cancelled() -> None:
    api, cancel = FakeApi(), threading.Event()
    api.on("GET", SETTLEMENT, answer("settled", "web 2/2", 1))
    cancel.set()
    with api.client() as c:
        assert wait_settled(c, "t", 60.0, show=False, cancel=cancel) is False
    assert api.requests == []
