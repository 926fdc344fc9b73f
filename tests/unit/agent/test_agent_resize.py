"""A resize in place on the agent's side (fake driver, fake clock): which allocations the
watch's answer resized (``resized``), the runner applying one live (same instance), after a
restart (the allocation's resources, not the spec's), and through ``Agent.sync``; a refused
resize reported to the server with what the instance runs with; a resize that arrives while
the instance starts applied once it runs."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent_support import offline_agent

from elastin.agent.drivers.base import Handle, InstanceConfig, ResizeRefused
from elastin.agent.runner import AllocRunner, resized
from elastin.clock import yield_now
from elastin.model.cluster import Allocation
from elastin.model.resources import Resources, describe_resize
from elastin.model.workload import RestartPolicy, Workload
from elastin.testing import FakeClock, FakeDriver

MI = 1 << 20
SPEC = Resources(200, 64 * MI)
BIG = Resources(500, 128 * MI)
FAST = RestartPolicy(mode="always", backoff=1, max_backoff=2)


class Reports:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, alloc_id: str, **fields: Any) -> None:
        self.items.append((alloc_id, fields))

    def events(self) -> list[tuple[str, str]]:
        return [(e[0], e[2]) for _, f in self.items for e in f.get("events", [])]


async def until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await yield_now()


def alloc(resources: Resources = SPEC, **kw: Any) -> Allocation:
    return Allocation(id="a1", app="app", workload="web", index=0, resources=resources, **kw)


def make(tmp: Path, driver: FakeDriver) -> tuple[AllocRunner, Reports]:
    reports = Reports()
    w = Workload(name="web", command=("srv",), resources=SPEC, restart=FAST)

    async def deps_ready(_a: Allocation, _w: Workload) -> str:
        return ""

    runner = AllocRunner(
        alloc(),
        w,
        driver,
        alloc_root=tmp / "allocs",
        state_dir=tmp / "h",
        report=reports,
        deps_ready=deps_ready,
        clock=FakeClock(autojump=True),
    )
    return runner, reports


def test_resized_picks_the_changed_live_allocations() -> None:
    current = {"a1": SPEC, "a2": SPEC, "a3": SPEC}
    allocs = [
        alloc(BIG),  # changed: resized
        replace(alloc(SPEC), id="a2"),  # unchanged
        replace(alloc(BIG), id="a3", desired="stop"),  # stopping: left alone
        replace(alloc(BIG), id="a4"),  # no runner here
        replace(alloc(Resources(200, 64 * MI, disk=5)), id="a2"),  # disk alone: no resize
    ]
    assert resized(allocs, current) == [("a1", BIG)]
    assert resized([alloc(Resources())], current) == []  # no resources known: none


def test_describe_resize_names_what_changed() -> None:
    assert describe_resize(SPEC, BIG) == "cpu 200m → 500m, memory 64Mi → 128Mi"
    assert describe_resize(SPEC, Resources(200, 96 * MI)) == "memory 64Mi → 96Mi"


async def test_running_instance_is_resized_live(tmp_path: Path) -> None:
    d = FakeDriver()
    runner, reports = make(tmp_path, d)
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1") and runner.state.status == "running")
    pid = runner.state.pid
    await runner.resize(BIG)
    assert d.resizes == [("a1", BIG)]
    assert runner.state.pid == pid and len(d.started) == 1  # no restart
    assert (
        "alloc.resized",
        f"cpu 200m → 500m, memory 64Mi → 128Mi in place (pid {pid}, no restart)",
    ) in reports.events()
    # a restart (an OOM kill) starts with the allocation's new resources, not the spec's
    d.oom("a1")
    await until(lambda: len(d.started) == 2 and d.running("a1"))
    assert d.started[-1].resources == BIG
    # the kept handle names the new resources (a restarted agent compares against them)
    loaded = AllocRunner.load_handle(runner.handle_file)
    assert loaded is not None and loaded[1].resources == BIG
    runner.request_stop()
    await asyncio.wait_for(task, 5)


async def test_resize_while_not_running_applies_at_start(tmp_path: Path) -> None:
    d = FakeDriver()
    runner, reports = make(tmp_path, d)
    await runner.resize(BIG)  # before it ever started
    assert d.resizes == []
    assert ("alloc.resized", "cpu 200m → 500m, memory 64Mi → 128Mi: applies when it starts") in (
        reports.events()
    )
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1"))
    assert d.started[-1].resources == BIG
    runner.request_stop()
    await asyncio.wait_for(task, 5)


async def test_sync_applies_a_resize_from_the_watch(tmp_path: Path) -> None:
    d = FakeDriver()
    agent = offline_agent(tmp_path, d)
    w = Workload(name="web", command=("srv",), resources=SPEC)

    async def workload(_a: Allocation) -> Workload:
        return w

    agent.workload = workload  # type: ignore[method-assign]
    async with asyncio.TaskGroup() as tg:
        a = alloc(SPEC, node_id="n1")
        await agent.sync(tg, [a])
        await until(lambda: d.running("a1") and agent.runners["a1"].state.status == "running")
        await agent.sync(tg, [replace(a, resources=BIG, status="running")])
        await until(lambda: d.resizes == [("a1", BIG)])
        assert agent.runners["a1"].alloc.resources == BIG
        assert len(d.started) == 1
        await agent.sync(tg, [replace(a, resources=BIG, status="running")])  # nothing more
        await yield_now()
        assert d.resizes == [("a1", BIG)]
        agent.runners["a1"].request_stop()


class RefusingDriver(FakeDriver):
    """Refuses every resize, as the task driver does below an instance's working set."""

    async def resize(self, handle: Handle, resources: Resources) -> Resources:
        raise ResizeRefused("the instance uses 100 MiB now, more than the new memory limit")


def refusals(reports: Reports) -> list[dict[str, Any]]:
    return [f["resize_refused"] for _, f in reports.items if "resize_refused" in f]


async def test_a_refused_resize_is_reported_with_the_resources_it_runs_with(
    tmp_path: Path,
) -> None:
    d = RefusingDriver()
    runner, reports = make(tmp_path, d)
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1") and runner.state.status == "running")
    await runner.resize(BIG)
    # the server is told (it puts the allocation's resources back), and the runner keeps
    # what the instance runs with: the next start is not silently bigger than the server counts
    assert refusals(reports) == [
        {"refused": {"cpu": 500, "memory": 128 * MI}, "running": {"cpu": 200, "memory": 64 * MI}}
    ]
    assert runner.alloc.resources == SPEC
    assert any(t == "alloc.resize_failed" for t, _ in reports.events())
    d.oom("a1")
    await until(lambda: len(d.started) == 2 and d.running("a1"))
    assert d.started[-1].resources == SPEC
    runner.request_stop()
    await asyncio.wait_for(task, 5)


class GatedDriver(FakeDriver):
    """``start`` waits for ``go``: a resize can arrive while the instance is starting."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def start(self, config: InstanceConfig) -> Handle:
        self.entered.set()
        await self.go.wait()
        return await super().start(config)


async def test_a_resize_while_the_instance_starts_is_applied_once_it_runs(
    tmp_path: Path,
) -> None:
    d = GatedDriver()
    runner, _reports = make(tmp_path, d)
    task = asyncio.create_task(runner.run())
    await until(d.entered.is_set)  # its configuration (SPEC) is built; the driver starts it
    await runner.resize(BIG)
    d.go.set()
    await until(lambda: runner.state.status == "running" and d.resizes == [("a1", BIG)])
    assert d.started[-1].resources == SPEC  # started with what it had, then resized live
    assert d.instances["a1"].config.resources == BIG
    assert len(d.started) == 1
    runner.request_stop()
    await asyncio.wait_for(task, 5)
