"""A full disk on the agent side, with fakes: the runner never leaves an instance it could
not record (or stopped watching) running, and the reporter keeps a batch the server failed
to take (a 500: its disk is full) instead of dropping it. Time is a ``FakeClock``."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from elastin.agent.agent import Reporter
from elastin.agent.drivers.base import ExitResult, Handle
from elastin.agent.runner import SAVE_RETRIES, AllocRunner
from elastin.client.errors import ApiError
from elastin.clock import yield_now
from elastin.model.cluster import Allocation
from elastin.model.workload import RestartPolicy, Workload
from elastin.testing import FakeClock, FakeDriver

W = Workload(name="web", command=("srv",), restart=RestartPolicy(mode="always", backoff=1))


class Reports:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def __call__(self, alloc_id: str, **fields: Any) -> None:
        self.items.append(fields)

    def last_status(self) -> dict[str, Any]:
        return [f for f in self.items if "status" in f][-1]


def make(tmp: Path, driver: FakeDriver) -> tuple[AllocRunner, Reports]:
    reports = Reports()

    async def deps_ready(_a: Allocation, _w: Workload) -> str:
        return ""

    runner = AllocRunner(
        Allocation(id="a1", app="app", workload="web", index=0),
        W,
        driver,
        alloc_root=tmp / "allocs",
        state_dir=tmp / "h",
        report=reports,
        deps_ready=deps_ready,
        clock=FakeClock(autojump=True),
    )
    return runner, reports


def enospc(*_a: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_handle_that_cannot_be_saved_stops_the_instance_and_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = FakeDriver()
    runner, reports = make(tmp_path, d)
    tries: list[int] = []

    def save(_h: Handle) -> None:
        tries.append(1)
        enospc()

    monkeypatch.setattr(runner, "save_handle", save)
    await asyncio.wait_for(runner.run(), 5)
    assert len(d.started) == 1 and not d.running("a1")  # no ghost left running
    assert len(tries) == len(SAVE_RETRIES) + 1
    last = reports.last_status()
    assert last["status"] == "failed" and last["pid"] == 0
    assert "No space left on device" in last["reason"]
    assert "was stopped" in last["reason"] and "Free space" in last["reason"]
    assert runner.state.pid == 0 and runner.handle is None


async def test_a_handle_save_that_fails_then_works_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = FakeDriver()
    runner, reports = make(tmp_path, d)
    real = runner.save_handle
    fails = [1, 1]

    def save(h: Handle) -> None:
        if fails:
            fails.pop()
            enospc()
        real(h)

    monkeypatch.setattr(runner, "save_handle", save)
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(5):
        while runner.state.status != "running":
            await yield_now()
    assert d.running("a1") and runner.handle_file.exists()
    runner.request_stop()
    await asyncio.wait_for(task, 5)
    assert reports.last_status()["status"] == "stopped"


class BrokenWait(FakeDriver):
    """Its ``wait`` fails (a bug, an OSError) while the instance runs."""

    async def wait(self, handle: Handle) -> ExitResult:
        await yield_now()
        raise RuntimeError("wait broke")


async def test_a_runner_that_dies_stops_its_instance_and_reports_failed_without_pid(
    tmp_path: Path,
) -> None:
    d = BrokenWait()
    runner, reports = make(tmp_path, d)
    await asyncio.wait_for(runner.run(), 5)
    assert not d.running("a1")
    last = reports.last_status()
    assert last["status"] == "failed" and last["pid"] == 0
    assert "wait broke" in last["reason"]
    assert not runner.handle_file.exists()


async def test_an_alloc_dir_that_cannot_be_made_fails_with_a_clear_reason(
    tmp_path: Path,
) -> None:
    d = FakeDriver()
    runner, reports = make(tmp_path, d)
    (tmp_path / "allocs").write_text("not a directory")
    await asyncio.wait_for(runner.run(), 5)
    assert d.started == []
    last = reports.last_status()
    assert last["status"] == "failed"
    assert last["reason"].startswith("cannot create the allocation directory")


class FullServer:
    """Answers 500 (its SQLite disk is full) until ``full`` is cleared."""

    def __init__(self) -> None:
        self.full = True
        self.batches: list[dict[str, dict[str, Any]]] = []

    async def allocs_status(self, reports: dict[str, dict[str, Any]]) -> dict[str, str]:
        if self.full:
            raise ApiError(500, "database or disk is full")
        self.batches.append({k: dict(v) for k, v in reports.items()})
        return {k: "ok" for k in reports}


async def test_a_batch_the_server_fails_on_is_kept_merged_and_retried() -> None:
    server, clock = FullServer(), FakeClock()
    r = Reporter(lambda: server, clock)
    r.report("a1", status="running", events=[("alloc.started", "x", "1", "info")])
    task = asyncio.create_task(r.run())
    async with asyncio.timeout(5):
        while clock.sleepers != 1:
            await yield_now()
    assert r.pending["a1"]["status"] == "running"  # kept, not dropped
    r.report("a1", status="failed", pid=0, events=[("alloc.failed", "x", "2", "info")])
    server.full = False
    clock.advance(Reporter.RETRY)
    async with asyncio.timeout(5):
        while not server.batches:
            await yield_now()
    assert server.batches == [
        {
            "a1": {
                "status": "failed",
                "pid": 0,
                "events": [("alloc.started", "x", "1", "info"), ("alloc.failed", "x", "2", "info")],
            }
        }
    ]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class SmallServer:
    """Refuses a batch of more than ``most`` allocations with a 413 (its body limit)."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.taken: list[str] = []

    async def allocs_status(self, reports: dict[str, dict[str, Any]]) -> dict[str, str]:
        if len(reports) > self.most:
            raise ApiError(413, "the request's body is over 4194304 bytes")
        self.taken += list(reports)
        return {k: "ok" for k in reports}


async def test_a_batch_too_large_for_the_server_is_sent_in_halves_not_dropped() -> None:
    """Reports piled up while the server was away grew past the API's body limit: the 413
    (a 4xx) dropped every allocation's status."""
    server = SmallServer(most=3)
    r = Reporter(lambda: server, FakeClock())
    for i in range(10):
        r.report(f"a{i}", status="running")
    await r.flush()
    assert sorted(server.taken) == sorted(f"a{i}" for i in range(10)) and not r.pending
