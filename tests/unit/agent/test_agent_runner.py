"""``AllocRunner`` on the fake driver: lifecycle, restart policy, stop, deps, re-attach.

Time is a ``FakeClock``: backoffs and the restart count's reset take no real time."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from elastin.agent.runner import AllocRunner
from elastin.clock import yield_now
from elastin.model.cluster import Allocation, IllegalTransition
from elastin.model.resources import Resources
from elastin.model.workload import RestartPolicy, Workload
from elastin.testing import FakeClock, FakeDriver


class Reports:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, alloc_id: str, **fields: Any) -> None:
        self.items.append((alloc_id, fields))

    def statuses(self) -> list[str]:
        return [f["status"] for _, f in self.items if "status" in f]

    def events(self) -> list[str]:
        return [e[0] for _, f in self.items for e in f.get("events", [])]


def make(
    tmp: Path, w: Workload, driver: FakeDriver, deps: str = "", clock: FakeClock | None = None
) -> tuple[AllocRunner, Reports]:
    reports = Reports()
    alloc = Allocation(id="a1", app="app", workload=w.name, index=0, type=w.type)

    async def deps_ready(_a: Allocation, _w: Workload) -> str:
        return deps

    runner = AllocRunner(
        alloc,
        w,
        driver,
        alloc_root=tmp / "allocs",
        state_dir=tmp / "h",
        report=reports,
        deps_ready=deps_ready,
        clock=clock or FakeClock(autojump=True),
    )
    return runner, reports


FAST = RestartPolicy(mode="always", backoff=1, max_backoff=2)  # on a clock that jumps


async def until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await yield_now()


async def test_service_restarts_with_backoff_then_stops(tmp_path: Path) -> None:
    d = FakeDriver()
    w = Workload(name="web", command=("srv",), restart=FAST, ports=())
    runner, reports = make(tmp_path, w, d)
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1"))
    assert runner.handle_file.exists()  # kept for re-attach
    d.exit("a1", 1)
    await until(lambda: runner.state.restarts == 1 and d.running("a1"))
    d.oom("a1")
    await until(lambda: runner.state.restarts == 2 and d.running("a1"))
    runner.request_stop()
    await asyncio.wait_for(task, 5)
    assert reports.statuses()[-1] == "stopped"
    assert {"alloc.started", "alloc.restarting", "alloc.oom_killed"} <= set(reports.events())
    assert not runner.handle_file.exists()


async def test_restart_attempts_exhausted_fails(tmp_path: Path) -> None:
    d = FakeDriver()
    w = Workload(
        name="web",
        command=("srv",),
        restart=RestartPolicy(mode="on-failure", attempts=2, backoff=1, max_backoff=1),
    )
    runner, reports = make(tmp_path, w, d)
    task = asyncio.create_task(runner.run())
    for n in range(3):
        await until(lambda n=n: len(d.started) == n + 1 and d.running("a1"))
        d.exit("a1", 3)
    await asyncio.wait_for(task, 5)
    assert reports.statuses()[-1] == "failed"
    last = [f for _, f in reports.items if f.get("status") == "failed"][-1]
    assert "gave up after 2 restarts" in last["reason"]


async def test_on_failure_service_that_exits_zero_completes(tmp_path: Path) -> None:
    d = FakeDriver()
    w = Workload(name="w", command=("srv",), restart=RestartPolicy(mode="on-failure"))
    runner, reports = make(tmp_path, w, d)
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1"))
    d.exit("a1", 0)
    await asyncio.wait_for(task, 5)
    assert reports.statuses()[-1] == "complete"


async def test_job_does_not_restart_in_place(tmp_path: Path) -> None:
    d = FakeDriver()
    w = Workload(name="j", type="job", command=("exit", "4"), restart=FAST)
    runner, reports = make(tmp_path, w, d)
    await asyncio.wait_for(runner.run(), 5)
    assert reports.statuses()[-1] == "failed"
    assert len(d.started) == 1


async def test_start_failure_fails_with_the_os_error(tmp_path: Path) -> None:
    d = FakeDriver()
    w = Workload(name="w", command=("missing",), restart=FAST)
    runner, reports = make(tmp_path, w, d)
    await asyncio.wait_for(runner.run(), 5)
    failed = [f for _, f in reports.items if f.get("status") == "failed"]
    assert failed and "No such file or directory" in failed[0]["reason"]
    assert "alloc.start_failed" in reports.events()


async def test_waits_for_dependencies_and_can_be_stopped_meanwhile(tmp_path: Path) -> None:
    d = FakeDriver()
    w = Workload(name="w", command=("srv",), depends_on=("db",))
    runner, reports = make(tmp_path, w, d, deps="waiting for dependencies: db")
    task = asyncio.create_task(runner.run())
    await until(lambda: reports.statuses() == ["pending"])
    assert not d.started
    runner.request_stop()
    await asyncio.wait_for(task, 5)
    assert reports.statuses()[-1] == "stopped"


async def test_env_ports_and_limits_reach_the_driver(tmp_path: Path) -> None:
    from elastin.model.workload import Port

    d = FakeDriver()
    w = Workload(
        name="w",
        command=("srv",),
        env=(("A", "1"),),
        resources=Resources(250, 1 << 26),
        ports=(Port("http", 0), Port("admin", 9999)),
    )
    runner, _ = make(tmp_path, w, d)
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1"))
    env = d.started[0].env
    assert env["A"] == "1" and env["ELASTIN_ALLOC_ID"] == "a1"
    assert env["PORT"] == env["ELASTIN_PORT_HTTP"] and int(env["PORT"]) > 0
    assert env["ELASTIN_PORT_ADMIN"] == "9999"
    assert d.started[0].resources == Resources(250, 1 << 26)
    runner.request_stop()
    await asyncio.wait_for(task, 5)


async def test_reattach_after_agent_restart(tmp_path: Path) -> None:
    d = FakeDriver()
    w = Workload(name="web", command=("srv",), restart=FAST)
    runner, _ = make(tmp_path, w, d)
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1"))
    task.cancel()  # the agent dies; the instance keeps running
    await asyncio.gather(task, return_exceptions=True)
    assert d.running("a1")
    loaded = AllocRunner.load_handle(runner.handle_file)
    assert loaded is not None
    handle = loaded[0]
    again, reports = make(tmp_path, w, d.restarted())
    task2 = asyncio.create_task(again.run(recovered=handle))
    await until(lambda: "running" in reports.statuses())
    assert "alloc.reattached" in reports.events()
    again.request_stop()
    await asyncio.wait_for(task2, 5)
    assert reports.statuses()[-1] == "stopped"


async def test_a_long_run_resets_the_restart_count(tmp_path: Path) -> None:
    d = FakeDriver()
    clock = FakeClock()
    w = Workload(
        name="web",
        command=("srv",),
        restart=RestartPolicy(mode="always", attempts=1, backoff=2, max_backoff=2, reset_after=60),
    )
    runner, reports = make(tmp_path, w, d, clock=clock)
    task = asyncio.create_task(runner.run())
    for n in range(3):  # each run outlives reset_after, so attempts=1 is never exhausted
        await until(lambda n=n: len(d.started) == n + 1 and d.running("a1"))
        clock.advance(60)
        d.exit("a1", 1)
        await until(lambda: clock.sleepers == 1)  # the backoff
        assert reports.items[-2][1]["reason"] == "restarting in 2s: exited with code 1"
        assert reports.items[-1][1]["events"][0][2].startswith("restart 1 in 2s")
        assert runner.state.restarts == 1
        clock.advance(1.9)
        await yield_now()
        assert not d.running("a1")  # not before the backoff is over
        clock.advance(0.1)
    await until(lambda: len(d.started) == 4 and d.running("a1"))
    d.exit("a1", 1)  # a short run: the one attempt is used up
    await asyncio.wait_for(task, 5)
    assert reports.statuses().count("failed") == 1
    assert "gave up after 1 restarts" in reports.items[-2][1]["reason"]


async def test_upstreams_get_a_private_local_listener_port(tmp_path: Path) -> None:
    d = FakeDriver()
    w = Workload(name="w", command=("srv",), upstreams=("catalog", "order-db"))
    runner, _ = make(tmp_path, w, d)
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1"))
    env = d.started[0].env
    host, port = env["ELASTIN_UPSTREAM_CATALOG"].split(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert env["ELASTIN_UPSTREAM_CATALOG_URL"] == f"http://127.0.0.1:{port}"
    assert "ELASTIN_UPSTREAM_ORDER_DB" in env
    assert runner.ports["upstream.catalog"] == int(port)
    runner.request_stop()
    await asyncio.wait_for(task, 5)


async def test_a_stop_during_the_backoff_stops_at_once(tmp_path: Path) -> None:
    d = FakeDriver()
    clock = FakeClock()
    w = Workload(name="web", command=("srv",), restart=RestartPolicy(mode="always", backoff=30))
    runner, reports = make(tmp_path, w, d, clock=clock)
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1"))
    d.exit("a1", 1)
    await until(lambda: clock.sleepers == 1)
    assert runner.state.status == "starting"
    runner.request_stop()
    await asyncio.wait_for(task, 5)
    assert reports.statuses()[-1] == "stopped"
    assert len(d.started) == 1


async def test_an_illegal_move_raises_and_fails_the_allocation(tmp_path: Path) -> None:
    d = FakeDriver()
    w = Workload(name="web", command=("srv",), restart=FAST)
    runner, reports = make(tmp_path, w, d)
    with pytest.raises(IllegalTransition):
        runner._set("complete")  # pending -> complete: never a legal move
    assert runner.state.status == "pending" and not reports.items
    runner.state.status = "stopped"
    with pytest.raises(IllegalTransition):
        runner._set("running")  # nothing leaves a terminal state


async def test_every_reported_move_is_legal(tmp_path: Path) -> None:
    from elastin.model.cluster import check_transition

    d = FakeDriver()
    w = Workload(name="web", command=("srv",), restart=FAST)
    runner, reports = make(tmp_path, w, d)
    task = asyncio.create_task(runner.run())
    for n in range(3):
        await until(lambda n=n: len(d.started) == n + 1 and d.running("a1"))
        d.exit("a1", 1)
    await until(lambda: d.running("a1"))
    runner.request_stop()
    await asyncio.wait_for(task, 5)
    moves = ["pending", *reports.statuses()]
    for old, new in itertools.pairwise(moves):
        check_transition(old, new)
    assert moves[-1] == "stopped"
