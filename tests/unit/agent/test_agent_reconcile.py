"""What should run on this node (``elastin.agent.reconcile``): every branch, and how
``Agent.sync`` executes the actions."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent_support import offline_agent

from elastin.agent.reconcile import (
    Forget,
    ReportLost,
    ReportStopped,
    Start,
    Stop,
    StopUnknown,
    reconcile,
)
from elastin.model.cluster import Allocation, AllocStatus, DesiredStatus
from elastin.testing import FakeDriver


def alloc(
    id_: str, status: AllocStatus = "pending", desired: DesiredStatus = "run", **kw: Any
) -> Allocation:
    return Allocation(
        id=id_, app="shop", workload="web", index=0, status=status, desired=desired, **kw
    )


DRIVERS = ("task",)


def test_a_new_pending_allocation_starts() -> None:
    a = alloc("a1")
    assert reconcile([a], {}, DRIVERS) == [Start(a)]


def test_no_start_without_its_driver_or_when_not_pending() -> None:
    assert reconcile([alloc("a1", kind="vm")], {}, DRIVERS) == []
    assert reconcile([alloc("a1", status="complete")], {}, DRIVERS) == []
    assert reconcile([alloc("a1", status="failed")], {}, DRIVERS) == []


def test_a_runner_already_has_it_nothing_to_do() -> None:
    assert reconcile([alloc("a1", status="running")], {"a1": False}, DRIVERS) == []
    assert reconcile([alloc("a1")], {"a1": False}, DRIVERS) == []


def test_asked_to_stop_a_runner_stops_it_with_the_drain_revision() -> None:
    a = alloc("a1", status="running", desired="stop")
    assert reconcile([a], {"a1": False}, DRIVERS, index=42) == [Stop("a1", 42)]


def test_asked_to_stop_what_nothing_runs_here_is_reported_stopped() -> None:
    for status in ("pending", "starting", "running"):
        a = alloc("a1", status=status, desired="stop", reason="scaled down")
        assert reconcile([a], {}, DRIVERS) == [ReportStopped("a1", "scaled down")]
    assert reconcile([alloc("a1", "running", "stop")], {}, DRIVERS) == [
        ReportStopped("a1", "stopped")
    ]
    assert reconcile([alloc("a1", "stopped", "stop")], {}, DRIVERS) == []  # final already


def test_running_here_without_a_runner_lost_track() -> None:
    for status in ("starting", "running"):  # one waiting to start: test_agent_reconcile_restart
        got = reconcile([alloc("a1", status=status, pid=4242)], {}, DRIVERS)
        assert got == [ReportLost("a1")]
    assert "agent restart" in ReportLost("a1").reason


def test_done_runners_are_forgotten_and_unknown_ones_stopped() -> None:
    runners = {"a1": True, "a2": False, "a3": True}
    actions = reconcile([alloc("a1", status="complete")], runners, DRIVERS)
    assert actions == [Forget("a1"), StopUnknown("a2"), Forget("a3")]
    assert "no longer" in StopUnknown("a2").reason


def test_allocation_actions_come_before_runner_actions_in_order() -> None:
    a, b = alloc("a"), alloc("b", status="running", desired="stop")
    actions = reconcile([a, b], {"b": False, "x": True}, DRIVERS, index=3)
    assert actions == [Start(a), Stop("b", 3), Forget("x")]


async def test_sync_executes_the_actions(tmp_path: Path) -> None:
    driver = FakeDriver()
    agent = offline_agent(tmp_path, driver)
    reports: list[tuple[str, dict[str, Any]]] = []
    agent.reporter.report = lambda alloc_id, **f: reports.append((alloc_id, f))  # type: ignore[method-assign]

    async def no_workload(_: Allocation) -> None:
        return None

    agent.workload = no_workload  # type: ignore[assignment,method-assign]
    async with asyncio.TaskGroup() as tg:
        await agent.sync(
            tg,
            [
                alloc("new"),
                alloc("gone", status="running", desired="stop"),
                alloc("lost", status="running"),
            ],
        )
        assert set(agent.runners) == {"new"}
    # the runner ran (and failed: no workload spec) and is forgotten on the next sync
    assert agent.runners["new"].done.is_set()
    assert ("gone", {"status": "stopped", "reason": "stopped"}) in reports
    assert any(i == "lost" and f.get("status") == "failed" for i, f in reports)
    async with asyncio.TaskGroup() as tg:
        await agent.sync(tg, [])
    assert agent.runners == {}
