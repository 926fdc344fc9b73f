"""The SDK's engines against a scripted API (``httpx.MockTransport``): ``create_*`` validates
and sends nothing, ``start_*`` applies and waits on the settlement query, ``get_*_resources``
reports requests, totals and measured use; errors are ``EngineError`` with a hint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from elastin.client.errors import DaemonFailed, ServerUnavailable
from elastin.client.http import Client
from elastin.model.cluster import Allocation, Usage
from elastin.model.codec import to_data
from elastin.model.units import MIB
from elastin.sdk import engines
from elastin.sdk.engines import (
    AutomationEngine,
    ContainerEngine,
    EngineError,
    VirtualizationEngine,
)


class FakeApi:
    """Answers per (method, path), in order, the last one repeated; records every request."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[Any]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, *answers: Any) -> None:
        self.answers[(method, path)] = list(answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.answers.get((request.method, request.url.path))
        if not queue:
            return httpx.Response(404, json={"message": f"no route {request.url.path}"})
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer)

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    """The server an engine finds (``Client.discover``) is this scripted one."""
    fake = FakeApi()
    client = Client("http://elastin.test", "tok", transport=httpx.MockTransport(fake))
    monkeypatch.setattr(Client, "discover", classmethod(lambda cls: client))
    return fake


def settlement(state: str, index: int, waiting: bool = False) -> dict[str, Any]:
    return {"state": state, "index": index, "waiting": waiting, "done": state != "settling"}


def test_create_task_validates_and_sends_nothing(api: FakeApi) -> None:
    engine = AutomationEngine()
    task = engine.create_task("ls -l", {"cpu": 1, "memory": 128}, name="lister")
    assert (task.name, task.app, task.kind, task.job, task.started) == (
        "lister",
        "sdk-lister",
        "task",
        True,
        False,
    )
    with pytest.raises(EngineError) as err:
        engine.create_task("ls", {"cpu": -1, "memory": 128})
    assert "cpu" in err.value.message and err.value.hint == "fix the arguments of the create call"
    assert api.requests == []


def test_created_names_are_unique() -> None:
    engine = AutomationEngine("http://elastin.test", "tok")
    a, b = engine.create_task("true"), engine.create_task("true")
    assert a.name != b.name and a.name.startswith("task-")


def test_start_task_applies_a_one_job_application_and_waits_until_done(api: FakeApi) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-lister", "changes": []})
    api.on(
        "GET",
        "/v1/apps/sdk-lister/settlement",
        settlement("settling", 4),
        settlement("settling", 6),
        settlement("settled", 7),
    )
    engine = AutomationEngine()
    task = engine.create_task("ls -l", {"cpu": 1, "memory": 128}, name="lister", env={"A": "1"})
    assert engine.start_task(task) is task and task.started
    body = json.loads(api.sent("POST", "/v1/apps")[0].content)
    assert body["file"] == "<task lister>"
    spec = yaml.safe_load(body["spec"])
    assert spec["app"] == "sdk-lister"
    job = spec["jobs"]["lister"]
    assert job["command"] == "ls -l" and job["env"] == {"A": "1"} and job["completions"] == 1
    assert job["resources"] == {"cpu": 1, "memory": 128}
    waits = api.sent("GET", "/v1/apps/sdk-lister/settlement")
    assert [r.url.params["index"] for r in waits] == ["0", "4", "6"]
    assert all(0 < float(r.url.params["wait"]) <= engines.SETTLE_WAIT for r in waits)


def test_start_returns_when_the_workload_waits_for_something(api: FakeApi) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-box", "changes": []})
    api.on("GET", "/v1/apps/sdk-box/settlement", settlement("settling", 3, waiting=True))
    engine = ContainerEngine()
    box = engine.create_container("alpine:3", ["sleep", "60"], name="box", replicas=2)
    engine.start_container(box)
    assert len(api.sent("GET", "/v1/apps/sdk-box/settlement")) == 1
    spec = yaml.safe_load(json.loads(api.requests[0].content)["spec"])
    assert spec["services"]["box"]["kind"] == "container"
    assert spec["services"]["box"]["replicas"] == 2


def test_start_with_no_time_to_wait_only_applies(api: FakeApi) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-vm1", "changes": []})
    engine = VirtualizationEngine()
    vm = engine.create_vm("debian.qcow2", {"cpu": 2, "memory": "1Gi"}, name="vm1")
    engine.start_vm(vm, wait=0)
    assert [r.url.path for r in api.requests] == ["/v1/apps"]


def test_errors_of_the_server_are_engine_errors(api: FakeApi) -> None:
    rejected = httpx.Response(422, json={"message": "no node fits", "hint": "ask for less"})
    api.on("POST", "/v1/apps", rejected)
    engine = AutomationEngine()
    task = engine.create_task("true", name="t1")
    with pytest.raises(EngineError) as err:
        engine.start_task(task)
    assert (err.value.message, err.value.hint) == ("no node fits", "ask for less")
    assert not task.started
    api.on("POST", "/v1/apps", {"app": "sdk-t1", "changes": []})
    api.on("GET", "/v1/apps/sdk-t1/settlement", httpx.Response(404, json={"message": "gone"}))
    with pytest.raises(EngineError) as err:
        engine.start_task(task)
    assert err.value.message == "gone"


def alloc(index: int, status: str, cpu: float, memory_mib: int) -> dict[str, Any]:
    a = Allocation(
        id=f"a{index}",
        app="sdk-web",
        workload="web",
        index=index,
        node_id="n1",
        status=status,  # type: ignore[arg-type]
        usage=Usage(cpu=cpu, memory=memory_mib * MIB),
    )
    data: dict[str, Any] = to_data(a)
    return data


def test_resources_report_requests_totals_and_measured_use(api: FakeApi) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-web", "changes": []})
    api.on("GET", "/v1/apps/sdk-web/settlement", settlement("settled", 2))
    api.on(
        "GET",
        "/v1/allocations",
        [alloc(0, "running", 250, 40), alloc(1, "running", 125, 20), alloc(2, "failed", 999, 9)],
    )
    engine = AutomationEngine()
    web = engine.create_task(
        "serve", {"cpu": "500m", "memory": 64}, name="web", service=True, replicas=3
    )
    before = engine.get_task_resources(web)
    assert before["allocations"] == [] and api.requests == []  # not started: nothing to ask
    engine.start_task(web)
    r = engine.get_task_resources(web)
    assert r["allocated"] == {
        "cpu": 0.5,
        "memory_mib": 64.0,
        "disk_mib": 0.0,
        "human": "cpu 500m, memory 64Mi",
    }
    assert r["instances"] == 3
    assert r["total"] == {"cpu": 1.5, "memory_mib": 192.0, "disk_mib": 0.0}
    assert r["measured"] == {"cpu": 0.375, "memory_mib": 60.0}  # running instances only
    assert [(i["index"], i["status"], i["node"]) for i in r["allocations"]] == [
        (0, "running", "n1"),
        (1, "running", "n1"),
        (2, "failed", "n1"),
    ]
    params = api.sent("GET", "/v1/allocations")[0].url.params
    assert (params["app"], params["all"]) == ("sdk-web", "true")


def test_stop_deletes_the_application(api: FakeApi) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-t2", "changes": []})
    api.on("GET", "/v1/apps/sdk-t2/settlement", settlement("settled", 1))
    api.on("DELETE", "/v1/apps/sdk-t2", {"deleted": "sdk-t2"})
    engine = AutomationEngine()
    task = engine.start_task(engine.create_task("true", name="t2"))
    engine.stop_task(task)
    assert not task.started
    assert len(api.sent("DELETE", "/v1/apps/sdk-t2")) == 1


def test_task_logs_are_every_instance_output(api: FakeApi) -> None:
    api.on("GET", "/v1/allocations", [alloc(0, "complete", 0, 0), alloc(1, "complete", 0, 0)])
    api.on("GET", "/v1/allocations/a0/logs", httpx.Response(200, content=b"zero\n"))
    api.on("GET", "/v1/allocations/a1/logs", httpx.Response(200, content=b"one\n"))
    engine = AutomationEngine()
    task = engine.create_task("echo", name="web")
    assert engine.get_task_logs(task) == "zero\none\n"


def test_without_a_server_the_engine_starts_one_and_reports_its_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def nobody(cls: type[Client]) -> Client:
        raise ServerUnavailable("no Elastin server is running")

    started: list[dict[str, Any]] = []

    def start_daemon(data_dir: Path, **kw: Any) -> Any:
        started.append({"data_dir": data_dir, **kw})
        raise DaemonFailed("the background server exited (1)", "see sdk-server.log")

    monkeypatch.setenv("ELASTIN_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(Client, "discover", classmethod(nobody))
    monkeypatch.setattr(engines, "start_daemon", start_daemon)
    with pytest.raises(EngineError) as err:
        AutomationEngine()
    assert (err.value.message, err.value.hint) == (
        "the background server exited (1)",
        "see sdk-server.log",
    )
    assert started == [
        {
            "data_dir": tmp_path,
            "port": 0,
            "log_path": tmp_path / "sdk-server.log",
            "stop_workloads": True,
        }
    ]


def test_a_server_the_engine_started_is_stopped_at_exit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = Client("http://elastin.test", "tok", transport=httpx.MockTransport(FakeApi()))
    answers: list[Client | Exception] = [ServerUnavailable("none yet"), server]

    def discover(cls: type[Client]) -> Client:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    proc = object()
    at_exit: list[tuple[Any, ...]] = []
    monkeypatch.setenv("ELASTIN_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(Client, "discover", classmethod(discover))
    monkeypatch.setattr(engines, "start_daemon", lambda data_dir, **kw: proc)
    monkeypatch.setattr(engines.atexit, "register", lambda *args: at_exit.append(args))
    engine = AutomationEngine()
    assert engine._client is server
    assert at_exit == [(engines.stop_daemon, proc)]
