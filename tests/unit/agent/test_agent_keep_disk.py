"""The agent's disk keeping on a ``FakeClock``: every instance's logs are capped every
``LOG_CHECK_SECONDS`` (not only at the 5 s heartbeat), bytes dropped become an event and a
counter; allocation directories are collected every ``GC_INTERVAL`` in a loop of their own."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from types import SimpleNamespace

from elastin.agent.agent import LOG_CHECK_SECONDS, Agent, AgentConfig
from elastin.agent.drivers.base import Handle
from elastin.agent.gc import GC_INTERVAL
from elastin.agent.logfiles import Rotation
from elastin.clock import yield_now
from elastin.model.cluster import Allocation
from elastin.testing import FakeClock, FakeDriver


class CappingDriver(FakeDriver):
    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def rotate_logs(self, handle: Handle) -> list[Rotation]:
        self.checks += 1
        if self.checks == 2:
            return [Rotation(Path("stdout.log"), dropped=4096, reason="no room on its disk")]
        return []


async def until(cond: object) -> None:
    async with asyncio.timeout(5):
        while not cond():  # type: ignore[operator]
            await yield_now()


async def test_logs_are_checked_every_second_and_drops_are_reported(tmp_path: Path) -> None:
    clock, d = FakeClock(start=time.time()), CappingDriver()
    cfg = AgentConfig(data_dir=tmp_path, server_url="http://127.0.0.1:9", token="t", mesh=False)
    agent = Agent(cfg, {"task": d}, clock=clock, dns=None, metrics=None)
    alloc = Allocation(id="a1", app="app", workload="w", index=0)
    agent.runners["a1"] = SimpleNamespace(  # type: ignore[assignment]
        handle=Handle("a1", "task", 1, 0.0), driver=d, alloc=alloc
    )
    task = asyncio.create_task(agent.keep_logs())
    try:
        for n in range(1, 4):
            await until(lambda n=n: d.checks == n and clock.sleepers == 1)
            clock.advance(LOG_CHECK_SECONDS)
        assert agent.log_dropped_bytes == 4096
        events = agent.reporter.pending["a1"]["events"]
        assert events[0][0] == "alloc.logs_dropped" and "4096 bytes" in events[0][2]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_allocation_directories_are_collected_on_their_interval(tmp_path: Path) -> None:
    """Only what is past its retention goes; what a runner holds stays, however old."""
    clock = FakeClock(start=time.time())
    cfg = AgentConfig(
        data_dir=tmp_path,
        server_url="http://127.0.0.1:9",
        token="t",
        mesh=False,
        gc_retention=3600.0,
        gc_disk_threshold=1.0,  # this test's disk is never "low"
    )
    agent = Agent(cfg, {"task": FakeDriver()}, clock=clock, dns=None, metrics=None)
    allocs = tmp_path / "allocs"
    for name in ("young", "old", "held"):
        (allocs / name).mkdir(parents=True)
    two_hours_ago = clock.time() - 7200
    for name in ("old", "held"):
        os.utime(allocs / name, (two_hours_ago, two_hours_ago))
    agent.runners["held"] = SimpleNamespace()  # type: ignore[assignment]
    task = asyncio.create_task(agent.keep_allocs())
    try:
        await until(lambda: clock.sleepers == 1)
        clock.advance(GC_INTERVAL)
        await until(lambda: agent.allocs_collected == 1)
        assert sorted(p.name for p in allocs.iterdir()) == ["held", "young"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
