"""An agent restart while an allocation waits to start (``elastin.agent.reconcile``, pure).

An allocation ``starting`` with no pid waits (for its upstream listeners, a fixed port, a
job's retry wait or a service's restart delay): nothing of it runs. A restarted agent starts
it (its restarts and attempt carry over) instead of reporting it lost, which replaced it, began
a job's retries over and reset a crash-looping service's restarts. One whose handle could not
be re-attached may still run: it is lost, never started twice. And a finished runner is kept
until the server has its end, so that a stale answer does not start it again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent_support import offline_agent

from elastin.agent.agent import Agent, AgentConfig
from elastin.agent.ports import PortAllocator
from elastin.agent.reconcile import Forget, ReportLost, Start, reconcile
from elastin.agent.runner import AllocRunner
from elastin.model.cluster import Allocation, AllocStatus
from elastin.model.workload import Port, Workload
from elastin.testing import FakeClock, FakeDriver

DRIVERS = ("task",)


def alloc(id_: str, status: AllocStatus, **kw: Any) -> Allocation:
    return Allocation(id=id_, app="shop", workload="web", index=0, status=status, **kw)


def test_a_waiting_allocation_without_an_instance_is_started_again() -> None:
    for reason in (
        "waiting for the node's proxy to listen for upstream api (127.0.0.1:21234)",
        "waiting for port 8080: shop.web[0] 1a2b3c4d: port http holds it",
        "retry 2 of 3 in 2s (after: exited with code 1)",
        "restarting in 4s: exited with code 1",
    ):
        a = alloc("a1", "starting", reason=reason, restarts=3, attempt=2)
        assert reconcile([a], {}, DRIVERS) == [Start(a)]  # the same allocation: counts kept


def test_a_started_or_unattached_instance_is_still_lost() -> None:
    assert reconcile([alloc("a1", "starting", pid=4242)], {}, DRIVERS) == [ReportLost("a1")]
    assert reconcile([alloc("a1", "running", pid=4242)], {}, DRIVERS) == [ReportLost("a1")]
    # a handle the agent could not re-attach to: its instance may run
    for status in ("pending", "starting"):
        got = reconcile([alloc("a1", status)], {}, DRIVERS, handles={"a1"})
        assert got == [ReportLost("a1")]
    # a driver this node does not have: nothing here can start it
    assert reconcile([alloc("a1", "starting", kind="vm")], {}, DRIVERS) == [ReportLost("a1")]


def test_a_done_runner_is_forgotten_once_the_server_has_its_end() -> None:
    # the runner failed; its report has not reached the server yet (still starting there)
    stale = alloc("a1", "starting")
    assert reconcile([stale], {"a1": True}, DRIVERS) == []
    assert reconcile([alloc("a1", "failed")], {"a1": True}, DRIVERS) == [Forget("a1")]
    assert reconcile([], {"a1": True}, DRIVERS) == [Forget("a1")]


async def test_a_restarted_agent_starts_a_waiting_allocation_with_its_counts(
    tmp_path: Path,
) -> None:
    driver = FakeDriver()
    agent = offline_agent(tmp_path, driver)
    reports: list[tuple[str, dict[str, Any]]] = []
    agent.reporter.report = lambda alloc_id, **f: reports.append((alloc_id, f))  # type: ignore[method-assign]
    w = Workload(name="web", command=("sleep", "60"))
    not_ready = ["the dependency db is not ready"]

    async def workload(_: Allocation) -> Workload:
        return w

    async def deps_ready(_a: Allocation, _w: Workload) -> str:
        return not_ready[0]

    agent.workload = workload  # type: ignore[method-assign]
    agent.deps_ready = deps_ready  # type: ignore[method-assign]
    a = alloc("a1", "starting", reason="restarting in 4s: exited with code 1", restarts=3)
    async with asyncio.TaskGroup() as tg:
        await agent.sync(tg, [a])
        runner = agent.runners["a1"]
        assert runner.state.restarts == 3
        await asyncio.sleep(0)
        # waiting for a dependency again: still starting (it may not go back to pending)
        assert runner.state.status == "starting"
        not_ready[0] = ""
        for _ in range(100):
            if runner.state.status == "running":
                break
            await asyncio.sleep(0)
        assert runner.state.status == "running"
        runner.request_stop("test over")
    assert not any(f.get("reason", "").startswith("lost track") for _, f in reports)
    waited = {"status": "starting", "restarts": 3, "reason": "the dependency db is not ready"}
    assert ("a1", waited) in reports
    assert any(f.get("status") == "running" and f.get("restarts") == 3 for _, f in reports)


async def test_a_handle_the_agent_could_not_read_is_never_started_twice(tmp_path: Path) -> None:
    cfg = AgentConfig(
        data_dir=tmp_path,
        server_url="http://127.0.0.1:9",
        token="t",
        mesh=False,
        dns_port=None,
        metrics_port=None,
    )
    agent = Agent(cfg, {"task": FakeDriver()}, clock=FakeClock(autojump=True))
    reports: list[tuple[str, dict[str, Any]]] = []
    agent.reporter.report = lambda alloc_id, **f: reports.append((alloc_id, f))  # type: ignore[method-assign]
    agent.state_dir.mkdir(parents=True)
    (agent.state_dir / "a1.json").write_text("{not json")
    async with asyncio.TaskGroup() as tg:
        await agent.recover(tg)
        await agent.sync(tg, [alloc("a1", "starting")])
    assert agent.runners == {}
    assert [i for i, f in reports if f.get("status") == "failed"] == ["a1"]


def test_the_ports_it_had_are_its_own_from_the_start(tmp_path: Path) -> None:
    # it waited for its upstream listeners with these ports (the mesh snapshot has them)
    # when the agent restarted: no take hands them out before the new runner starts it
    pool = PortAllocator(21000, 21002, is_free=lambda _p: True)
    a = alloc("a1", "starting", ports=(("http", 21000), ("upstream.api", 21001)))
    w = Workload(name="web", command=("srv",), ports=(Port("http"),), upstreams=("api",))

    async def deps_ready(_a: Allocation, _w: Workload) -> str:
        return ""

    AllocRunner(
        a,
        w,
        FakeDriver(),
        alloc_root=tmp_path / "allocs",
        state_dir=tmp_path / "handles",
        report=lambda _alloc_id, **_f: None,
        deps_ready=deps_ready,
        ports=pool,
    )
    assert {p: r.owner for p, r in pool.held().items()} == {21000: "a1", 21001: "a1"}
    assert pool.take("other", "x") == 21002
