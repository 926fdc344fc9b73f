"""Failures inside the agent stay with the allocation or application that caused them
(issue #10, item 3), and the node's proxy outlives an agent that stops while instances run
(item 8): an error preparing one allocation fails it (an event, a log line with the
traceback) while the others start; an error escaping a runner is an event on it; a mesh
part that cannot be rendered leaves only its application out of the proxy; a loop of the
agent that fails is run again; an error the agent cannot confine ends ``run`` with
``AgentFailed`` (and the command exits non-zero); cancelled runners are not finished."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import elastin.mesh.haproxy.render as render_mod
from elastin.agent.agent import Agent, AgentConfig, AgentFailed
from elastin.agent.drivers.base import Handle
from elastin.agent.gc import held_by_handles
from elastin.agent.mesh import MeshManager, keep_running
from elastin.clock import yield_now
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot
from elastin.model.cluster import Allocation
from elastin.model.codec import to_data
from elastin.model.workload import Workload
from elastin.testing import FakeClock, FakeDriver, FakeProxy

Reports = list[tuple[str, dict[str, Any]]]


def alloc(id_: str, app: str = "shop", status: str = "pending") -> Allocation:
    return Allocation(
        id=id_,
        app=app,
        workload="web",
        index=0,
        status=status,
        desired="run",  # type: ignore[arg-type]
    )


def agent(tmp: Path, driver: FakeDriver | None = None) -> tuple[Agent, Reports]:
    cfg = AgentConfig(
        data_dir=tmp,
        server_url="http://127.0.0.1:9",
        token="t",
        mesh=False,
        dns_port=None,
        metrics_port=None,
    )
    a = Agent(cfg, {"task": driver or FakeDriver()}, clock=FakeClock(autojump=True))
    reports: Reports = []
    a.reporter.report = lambda alloc_id, **f: reports.append((alloc_id, f))  # type: ignore[method-assign]
    return a, reports


WEB = Workload(name="web", command=("sleep", "60"))


def events(reports: Reports, alloc_id: str) -> list[tuple[str, str, str, str]]:
    return [e for i, f in reports if i == alloc_id for e in f.get("events", [])]


async def test_an_error_preparing_one_allocation_fails_it_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    driver = FakeDriver()
    a, reports = agent(tmp_path, driver)

    async def workload(al: Allocation) -> Workload | None:
        if al.app == "bad":  # e.g. data in the store the agent cannot decode
            raise KeyError("resources")
        return WEB

    a.workload = workload  # type: ignore[method-assign]
    async with asyncio.TaskGroup() as tg:
        await a.sync(tg, [alloc("b1", app="bad"), alloc("g1", app="good")])
        for _ in range(100):
            if driver.running("g1"):
                break
            await yield_now()
        assert driver.running("g1")  # the other app's allocation started
        a.runners["g1"].request_stop()
    assert "b1" not in a.runners
    failed = [f for i, f in reports if i == "b1" and f.get("status") == "failed"]
    assert failed and "KeyError" in failed[0]["reason"]
    (event,) = events(reports, "b1")
    assert event[0] == "alloc.agent_error" and event[3] == "error"
    (record,) = [r for r in caplog.records if "b1" in r.getMessage() or "bad" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None  # the traceback


class StartBreaks(FakeDriver):
    async def start(self, config: Any) -> Any:
        if config.alloc_id == "b1":
            raise RuntimeError("a bug in the driver")
        return await super().start(config)


async def test_an_error_escaping_a_runner_is_an_error_event_on_its_allocation(
    tmp_path: Path,
) -> None:
    driver = StartBreaks()
    a, reports = agent(tmp_path, driver)

    async def workload(_: Allocation) -> Workload:
        return WEB

    a.workload = workload  # type: ignore[method-assign]
    async with asyncio.TaskGroup() as tg:
        await a.sync(tg, [alloc("b1"), alloc("g1")])
        for _ in range(100):
            if driver.running("g1") and a.runners["b1"].done.is_set():
                break
            await yield_now()
        assert driver.running("g1")
        a.runners["g1"].request_stop()
    assert a.runners["b1"].state.status == "failed"
    assert ("alloc.agent_error", "error") in [(e[0], e[3]) for e in events(reports, "b1")]


async def test_cancelled_runners_are_not_finished_and_keep_the_proxy_up(tmp_path: Path) -> None:
    driver = FakeDriver()
    a, _ = agent(tmp_path, driver)
    proxy = FakeProxy()
    proxy.running = True
    a.mesh = MeshManager(lambda: None, "n1", tmp_path / "mesh", proxy)  # type: ignore[arg-type,return-value]

    async def workload(_: Allocation) -> Workload:
        return WEB

    a.workload = workload  # type: ignore[method-assign]

    async def run_until_cancelled() -> None:
        async with asyncio.TaskGroup() as tg:
            await a.sync(tg, [alloc("a1")])

    task = asyncio.create_task(run_until_cancelled())
    for _ in range(100):
        if driver.running("a1"):
            break
        await yield_now()
    task.cancel()  # the agent stops (SIGTERM): its instances keep running
    with pytest.raises(asyncio.CancelledError):
        await task
    assert driver.running("a1")
    assert not a.runners["a1"].done.is_set()  # cancelled is not finished
    assert a.instances_running() == ["a1"]
    a.stop_mesh_if_idle()
    assert proxy.stops == 0 and proxy.alive()
    # once nothing runs here any more, stopping the agent stops the proxy
    (tmp_path / "agent" / "handles" / "a1.json").unlink()
    a.runners["a1"].handle = None
    a.stop_mesh_if_idle()
    assert proxy.stops == 1


LST = (
    Listener("g1.api", 18080, "good.api.http", owner="good/web"),
    Listener("c1.api", 18081, "bad.api.http", owner="caller/web"),
)
CLUSTERS = (
    Cluster("good.api.http", endpoints=(Endpoint("g2-http", "127.0.0.1", 9001),)),
    Cluster("bad.api.http", endpoints=(Endpoint("b2-http", "127.0.0.1", 9002),)),
    Cluster("bad.admin.http", endpoints=(Endpoint("b2-admin", "127.0.0.1", 9003),)),
)


REAL_BACKEND = render_mod._backend


def breaks_bad(monkeypatch: pytest.MonkeyPatch) -> None:
    real = REAL_BACKEND

    def backend(c: Cluster) -> list[str]:
        if c.name == "bad.api.http":
            raise ValueError("cannot render this policy")
        return real(c)

    monkeypatch.setattr(render_mod, "_backend", backend)


async def test_an_app_that_cannot_be_rendered_is_left_out_and_the_others_keep_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    breaks_bad(monkeypatch)
    proxy = FakeProxy()
    told: list[tuple[str, str, tuple[str, ...]]] = []
    m = MeshManager(
        lambda: None,  # type: ignore[arg-type,return-value]
        "n1",
        tmp_path / "mesh",
        proxy,
        clock=FakeClock(),
        on_left_out=lambda app, why, callers: told.append((app, why, callers)),
    )
    assert await m.apply(MeshSnapshot(1, "n1", LST, CLUSTERS)) == "started"
    config = proxy.configs[-1]
    assert "c_good.api.http" in config and ":18080" in config
    assert "bad." not in config and ":18081" not in config  # the whole app, and its listener
    assert m.left_out == {"bad": "ValueError: cannot render this policy"}
    assert told == [("bad", "ValueError: cannot render this policy", ("c1",))]
    # the next version (an endpoint more for good) is a runtime update; logged once, told
    # again (the agent reports it once per allocation)
    more = (replace_endpoints(CLUSTERS[0], 9004), *CLUSTERS[1:])
    assert await m.apply(MeshSnapshot(2, "n1", LST, more)) == "updated"
    assert len(told) == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "bad" in errors[0].getMessage()
    # fixed: back in
    monkeypatch.setattr(render_mod, "_backend", REAL_BACKEND)
    assert await m.apply(MeshSnapshot(3, "n1", LST, more)) == "reloaded"
    assert "c_bad.api.http" in proxy.configs[-1] and m.left_out == {}


def replace_endpoints(c: Cluster, port: int) -> Cluster:
    return replace(c, endpoints=(*c.endpoints, Endpoint(f"g{port}-http", "127.0.0.1", port)))


async def test_a_failing_loop_is_logged_and_run_again(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("a bug")

    clock = FakeClock(autojump=True)
    t0 = clock.monotonic()
    await keep_running("flaky", flaky, clock)
    assert len(runs) == 3
    assert clock.monotonic() - t0 == 1 + 2  # a growing pause between the runs
    failures = [r for r in caplog.records if "flaky failed" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures)


async def test_a_vital_loop_that_keeps_failing_stops_the_agent() -> None:
    """An allocation watch failing every time was re-run for ever with a log line: the node
    kept heartbeating, looked healthy and started or stopped nothing."""
    runs: list[int] = []

    async def broken() -> None:
        runs.append(1)
        raise RuntimeError("cannot read what the server sends")

    with pytest.raises(RuntimeError, match="cannot read"):
        await keep_running("the watch", broken, FakeClock(autojump=True), give_up_after=4)
    assert len(runs) == 4


async def test_an_error_the_agent_cannot_confine_ends_run_with_agent_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = agent(tmp_path)

    async def register() -> Any:
        raise RuntimeError("a bug outside any allocation")

    a.register = register  # type: ignore[method-assign]
    with pytest.raises(AgentFailed, match="RuntimeError: a bug outside any allocation"):
        await a.run()
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert critical and critical[0].exc_info is not None  # the traceback, in the log
    assert "internal error" in critical[0].getMessage()


async def test_an_agent_its_environment_does_not_let_run_says_what_and_where(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "allocs").write_text("a file where the agent keeps its instances' directories")
    a, _ = agent(tmp_path)
    with pytest.raises(FileExistsError) as e:
        await a.run()
    assert e.value.filename == str(tmp_path / "allocs")
    (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "cannot run" in line.getMessage() and line.exc_info is None


def test_the_mesh_snapshot_leaves_out_an_app_whose_part_cannot_be_built(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The snapshot every agent receives: one app's clusters or listeners failing to build
    (data validation did not catch, a bug) leaves that app out, not the whole mesh."""
    import elastin.mesh.model.build as build_mod
    from elastin.model.spec import parse_spec

    def spec(app: str) -> Any:
        return parse_spec(
            f"app: {app}\nservices:\n"
            "  web:\n    command: x\n    upstreams: [api]\n"
            "  api:\n    command: y\n    ports: {http: 0}\n"
        )

    def running(app: str, i: str, w: str, ports: dict[str, int]) -> Allocation:
        return Allocation(
            id=f"{app[0]}{i}",
            app=app,
            workload=w,
            index=0,
            node_id="n1",
            status="running",
            ports=tuple(ports.items()),
        )

    apps = {"bad": spec("bad"), "good": spec("good")}
    allocs = [
        running(app, i, w, ports)
        for app in apps
        for i, w, ports in (("1", "web", {"upstream.api": 21000}), ("2", "api", {"http": 9001}))
    ]
    real = build_mod._cluster

    def cluster(name: str, *args: Any) -> Cluster:
        if name.startswith("bad."):
            raise TypeError("'<' not supported between 'str' and 'int'")
        return real(name, *args)

    monkeypatch.setattr(build_mod, "_cluster", cluster)
    snap = build_mod.build_snapshot(3, "n1", apps, allocs, {"n1": "127.0.0.1"})
    assert [c.name for c in snap.clusters] == ["good.api.http"]
    assert [lst.cluster for lst in snap.listeners] == ["good.api.http"]
    (record,) = [r for r in caplog.records if "bad" in r.getMessage()]
    assert record.exc_info is not None
    # a caller whose listeners cannot be built loses those, the others keep theirs
    monkeypatch.setattr(build_mod, "_cluster", real)
    broken = {**apps, "bad": replace(apps["bad"], workloads=None)}  # not a sequence
    snap = build_mod.build_snapshot(4, "n1", broken, allocs, {"n1": "127.0.0.1"})
    assert [c.name for c in snap.clusters] == ["good.api.http"]
    assert [lst.cluster for lst in snap.listeners] == ["good.api.http"]


def test_a_standalone_agents_data_directory_is_root_s_alone(tmp_path: Path) -> None:
    """A standalone agent's data directory was 0755 and its instances' logs 0644: a second
    user read a workload's DB_PASSWORD from its stdout log (issue #10, item 9)."""
    data = tmp_path / "agent-data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    agent(data)
    assert data.stat().st_mode & 0o777 == 0o700


async def test_a_stale_or_unreadable_handle_neither_holds_the_proxy_nor_blocks_gc(
    tmp_path: Path,
) -> None:
    """A truncated handle file kept HAProxy running after `elastin down`, for ever: every
    handle on disk counted as a running instance, alive or not, readable or not."""
    a, _ = agent(tmp_path)
    handles = tmp_path / "agent" / "handles"
    handles.mkdir(parents=True)
    (handles / "torn.json").write_text('{"handle": {"alloc_id"')
    dead = Handle("gone", "task", pid=2**22 + 7, started_at=0.0, data={"start_ticks": 1})
    body = {"handle": to_data(dead), "alloc": to_data(alloc("gone")), "restarts": 0}
    (handles / "gone.json").write_text(json.dumps(body))
    assert a.instances_running() == []  # the proxy may stop
    async with asyncio.TaskGroup() as tg:
        await a.recover(tg)
    assert (handles / "torn.bad").exists() and not (handles / "torn.json").exists()
    assert "torn" not in held_by_handles(handles)  # its directory may be collected


def test_the_registry_lists_every_app_it_can(caplog: pytest.LogCaptureFixture) -> None:
    """`GET /v1/mesh/services` built the registry of all applications at once: one that
    could not be listed failed it for every application (TypeError)."""
    from elastin.mesh.model.build import guarded_registry
    from elastin.model.spec import parse_spec

    good = parse_spec("app: good\nservices:\n  api:\n    command: y\n    ports: {http: 0}\n")
    broken = replace(good, name="bad", workloads=None)  # type: ignore[arg-type]
    entries = guarded_registry({"bad": broken, "good": good}, [], {})
    assert [(e.app, e.name) for e in entries] == [("good", "api")]
    assert "the mesh leaves application bad out" in caplog.text
