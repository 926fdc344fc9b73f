"""The SDK's engines against a scripted API (``httpx.MockTransport``): ``create_*`` validates
and sends nothing, ``start_*`` applies and waits on the settlement query until the workload
runs (a job: finished) or raises with the reason, leaving nothing queued; ``get_*_resources``
reports requests, what is allocated, totals and measured use; closing an engine deletes what
it started unless it keeps it; errors are ``EngineError`` with a hint."""

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
from elastin.model.resources import Resources
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


class StepClock:
    """A monotonic clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        self.now += self.step
        return self.now

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - not used by the SDK
        self.now += seconds


@pytest.fixture(autouse=True)
def at_exit(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What engines register to run at the interpreter's exit (kept here, not run)."""
    registered: list[Any] = []
    monkeypatch.setattr(engines.atexit, "register", lambda *args: registered.append(args))
    monkeypatch.setattr(
        engines.atexit,
        "unregister",
        lambda fn: registered.__setitem__(slice(None), [r for r in registered if r[0] != fn]),
    )
    return registered


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


def test_a_workload_that_cannot_be_placed_raises_the_reason_and_is_not_left_queued(
    api: FakeApi,
) -> None:
    """The finding: ``start_task`` returned in 0.6 s with the task pending ("no node has 1 cpu
    free") and the script ended with it still queued."""
    api.on("POST", "/v1/apps", {"app": "sdk-big", "changes": []})
    api.on(
        "GET",
        "/v1/apps/sdk-big/settlement",
        settlement("settling", 2),
        settlement("settling", 3, waiting=True),
    )
    api.on(
        "GET",
        "/v1/allocations",
        [alloc(0, "pending", 0, 0, app="sdk-big", node="", reason="no node has 1 cpu free")],
    )
    api.on("DELETE", "/v1/apps/sdk-big", {"deleted": "sdk-big"})
    engine = AutomationEngine()
    task = engine.create_task("true", {"cpu": 1, "memory": 128}, name="big")
    with pytest.raises(EngineError) as err:
        engine.start_task(task)
    assert err.value.message == "task 'big' cannot start: no node has 1 cpu free"
    assert "ask for less" in err.value.hint and "nothing of it was left" in err.value.hint
    assert len(api.sent("DELETE", "/v1/apps/sdk-big")) == 1 and not task.started
    engine.close()
    assert len(api.sent("DELETE", "/v1/apps/sdk-big")) == 1  # not deleted twice


def test_a_container_waits_likewise_until_no_node_has_its_driver(api: FakeApi) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-box", "changes": []})
    api.on("GET", "/v1/apps/sdk-box/settlement", settlement("settling", 3, waiting=True))
    reason = "no node has the container driver"
    api.on(
        "GET",
        "/v1/allocations",
        [alloc(i, "pending", 0, 0, app="sdk-box", node="", reason=reason) for i in range(2)],
    )
    api.on("DELETE", "/v1/apps/sdk-box", {"deleted": "sdk-box"})
    engine = ContainerEngine()
    box = engine.create_container("alpine:3", ["sleep", "60"], name="box", replicas=2)
    with pytest.raises(EngineError) as err:
        engine.start_container(box)
    assert err.value.message == f"container 'box' cannot start: {reason}"  # named once
    spec = yaml.safe_load(json.loads(api.requests[0].content)["spec"])
    assert spec["services"]["box"]["kind"] == "container"
    assert spec["services"]["box"]["replicas"] == 2


def test_a_failed_job_raises_its_reason_and_last_output(api: FakeApi) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-bad", "changes": []})
    api.on("GET", "/v1/apps/sdk-bad/settlement", settlement("settling", 1), settlement("failed", 5))
    api.on(
        "GET",
        "/v1/allocations",
        [
            alloc(0, "failed", 0, 0, app="sdk-bad", reason="exited with code 2", updated=1),
            alloc(1, "failed", 0, 0, app="sdk-bad", reason="exited with code 3", updated=2),
        ],
    )
    api.on("GET", "/v1/allocations/a1/logs", httpx.Response(200, content=b"x\nTraceback\nboom\n"))
    api.on("DELETE", "/v1/apps/sdk-bad", {"deleted": "sdk-bad"})
    engine = AutomationEngine()
    task = engine.create_task("python3 bad.py", name="bad")
    with pytest.raises(EngineError) as err:
        engine.start_task(task)
    assert err.value.message == (
        "task 'bad' failed: exited with code 3; exited with code 2\n"
        "  its last output:\n    x\n    Traceback\n    boom"
    )
    params = api.sent("GET", "/v1/allocations/a1/logs")[0].url.params
    assert (params["stream"], params["tail"]) == ("stderr", str(engines.LOG_LINES))
    assert len(api.sent("DELETE", "/v1/apps/sdk-bad")) == 1


def test_a_service_that_does_not_run_in_time_is_stopped_and_named(api: FakeApi) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-slow", "changes": []})
    api.on("GET", "/v1/apps/sdk-slow/settlement", settlement("settling", 1))
    api.on("GET", "/v1/allocations", [alloc(0, "running", 0, 0, app="sdk-slow")])
    api.on("DELETE", "/v1/apps/sdk-slow", {"deleted": "sdk-slow"})
    engine = AutomationEngine()
    engine.clock = StepClock(1.0)
    task = engine.create_task("serve", name="slow", service=True)
    with pytest.raises(EngineError) as err:
        engine.start_task(task, wait=5)
    assert err.value.message == "task 'slow' did not run within 5 s"
    assert len(api.sent("DELETE", "/v1/apps/sdk-slow")) == 1
    waits = api.sent("GET", "/v1/apps/sdk-slow/settlement")
    assert 1 <= len(waits) <= 5


def test_by_default_a_job_is_waited_for_until_it_finishes(api: FakeApi) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-long", "changes": []})
    api.on(
        "GET",
        "/v1/apps/sdk-long/settlement",
        *[settlement("settling", i) for i in range(1, 40)],
        settlement("settled", 40),
    )
    engine = AutomationEngine()
    engine.clock = StepClock(3600.0)  # an hour per look: still waited for
    engine.start_task(engine.create_task("sleep 36000", name="long"))
    assert len(api.sent("GET", "/v1/apps/sdk-long/settlement")) == 40
    assert api.sent("DELETE", "/v1/apps/sdk-long") == []


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


HALF_CORE = Resources(500, 64 * MIB, 0)


def alloc(
    index: int,
    status: str,
    cpu: float,
    memory_mib: int,
    *,
    app: str = "sdk-web",
    node: str = "n1",
    reason: str = "",
    updated: float = 0.0,
    resources: Resources = HALF_CORE,
) -> dict[str, Any]:
    a = Allocation(
        id=f"a{index}",
        app=app,
        workload=app.removeprefix("sdk-"),
        index=index,
        node_id=node,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        resources=resources,
        usage=Usage(cpu=cpu, memory=memory_mib * MIB),
        updated_at=updated,
    )
    data: dict[str, Any] = to_data(a)
    return data


def test_resources_report_requests_totals_and_measured_use(api: FakeApi) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-web", "changes": []})
    api.on("GET", "/v1/apps/sdk-web/settlement", settlement("settled", 2))
    api.on(
        "GET",
        "/v1/allocations",
        [
            alloc(0, "running", 250, 40),
            alloc(1, "running", 125, 20),
            alloc(2, "failed", 999, 9),
            alloc(3, "pending", 0, 0, node="", reason="no node has 500m cpu free"),
        ],
    )
    engine = AutomationEngine()
    web = engine.create_task(
        "serve", {"cpu": "500m", "memory": 64}, name="web", service=True, replicas=3
    )
    before = engine.get_task_resources(web)
    assert before["allocations"] == [] and api.requests == []  # not started: nothing to ask
    engine.start_task(web)
    r = engine.get_task_resources(web)
    assert r["requested"] == {
        "cpu": 0.5,
        "memory_mib": 64.0,
        "disk_mib": 0.0,
        "human": "cpu 500m, memory 64Mi",
    }
    # what is allocated: the two instances placed and not finished, not the request
    assert r["allocated"] == {
        "cpu": 1.0,
        "memory_mib": 128.0,
        "disk_mib": 0.0,
        "human": "cpu 1, memory 128Mi",
    }
    assert r["instances"] == 3
    assert r["total"] == {"cpu": 1.5, "memory_mib": 192.0, "disk_mib": 0.0}
    assert r["measured"] == {"cpu": 0.375, "memory_mib": 60.0}  # running instances only
    assert [(i["index"], i["status"], i["node"]) for i in r["allocations"]] == [
        (0, "running", "n1"),
        (1, "running", "n1"),
        (2, "failed", "n1"),
        (3, "pending", ""),
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
    # the engine's own clean-up runs first (atexit runs last in first), then the server stops
    assert at_exit == [(engines.stop_daemon, proc), (engine._close_at_exit,)]


def test_closing_the_engine_deletes_what_it_started(api: FakeApi, at_exit: list[Any]) -> None:
    """The finding: ``sdk-*`` applications piled up."""
    for name in ("t1", "t2", "t3"):
        api.on("POST", "/v1/apps", {"app": f"sdk-{name}", "changes": []})
        api.on("GET", f"/v1/apps/sdk-{name}/settlement", settlement("settled", 1))
        api.on("DELETE", f"/v1/apps/sdk-{name}", {"deleted": f"sdk-{name}"})
    with AutomationEngine() as engine:
        assert at_exit == [(engine._close_at_exit,)]
        t1, t2, t3 = (
            engine.start_task(engine.create_task("true", name=n)) for n in ["t1", "t2", "t3"]
        )
        engine.stop_task(t2)
    assert at_exit == []  # closed: nothing left for the exit
    deleted = [r.url.path for r in api.requests if r.method == "DELETE"]
    assert deleted == ["/v1/apps/sdk-t2", "/v1/apps/sdk-t1", "/v1/apps/sdk-t3"]
    assert not (t1.started or t2.started or t3.started)
    engine.close()  # again: nothing more
    assert len([r for r in api.requests if r.method == "DELETE"]) == 3
    with pytest.raises(EngineError) as err:
        engine.start_task(t1)
    assert err.value.message == "the engine is closed"


def test_an_engine_that_keeps_its_workloads_deletes_nothing(api: FakeApi) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-kept", "changes": []})
    api.on("GET", "/v1/apps/sdk-kept/settlement", settlement("settled", 1))
    engine = AutomationEngine(keep=True)
    task = engine.start_task(engine.create_task("true", name="kept"))
    engine.close()
    assert task.started and api.sent("DELETE", "/v1/apps/sdk-kept") == []


def test_at_exit_an_engine_deletes_what_it_started_and_reports_a_failure_in_one_line(
    api: FakeApi, at_exit: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("POST", "/v1/apps", {"app": "sdk-x", "changes": []})
    api.on("GET", "/v1/apps/sdk-x/settlement", settlement("settled", 1))
    api.on("DELETE", "/v1/apps/sdk-x", httpx.Response(503, json={"message": "store is busy"}))
    engine = AutomationEngine()
    engine.start_task(engine.create_task("true", name="x"))
    ((cleanup,),) = at_exit
    cleanup()  # as the interpreter does at exit
    assert len(api.sent("DELETE", "/v1/apps/sdk-x")) == 1
    err = capsys.readouterr().err
    assert err.startswith("elastin: could not delete what the engine started: sdk-x: store is busy")
    assert "Traceback" not in err and "elastin down APP" in err


def test_the_seeds_module_names_are_the_engines() -> None:
    from elastin.automation import AutomationEngine as A
    from elastin.containerization import ContainerEngine as C
    from elastin.virtualization import VirtualizationEngine as V

    assert A is AutomationEngine and C is ContainerEngine and V is VirtualizationEngine
