"""The ``Reporter``: merges reports per allocation, and keeps them while the server is away
(retrying every ``RETRY`` seconds on a fake clock) so that nothing is lost."""

from __future__ import annotations

import asyncio
from typing import Any

from elastin.agent.agent import Reporter
from elastin.client.errors import ApiError, ServerUnavailable
from elastin.clock import yield_now
from elastin.testing import FakeClock


class FakeServer:
    """Takes ``allocs_status`` batches; ``away`` makes it unreachable."""

    def __init__(self) -> None:
        self.batches: list[dict[str, dict[str, Any]]] = []
        self.away = False
        self.reject = False
        self.results: dict[str, str] = {}

    async def allocs_status(self, reports: dict[str, dict[str, Any]]) -> dict[str, str]:
        if self.away:
            raise ServerUnavailable("no server at http://127.0.0.1:9")
        if self.reject:
            raise ApiError(400, "bad report")
        self.batches.append({k: dict(v) for k, v in reports.items()})
        return {k: self.results.get(k, "ok") for k in reports}


async def until(cond: Any) -> None:
    async with asyncio.timeout(5):
        while not cond():
            await yield_now()


def test_reports_merge_newest_fields_win_and_events_add_up() -> None:
    r = Reporter(lambda: FakeServer(), FakeClock())
    r.report("a1", status="starting", restarts=0, events=[("alloc.started", "x", "pid 1", "info")])
    r.report("a1", status="running", pid=7, events=[("alloc.healthy", "x", "ok", "info")])
    r.report("a2", healthy=True)
    assert r.pending["a1"]["status"] == "running"
    assert r.pending["a1"]["pid"] == 7 and r.pending["a1"]["restarts"] == 0
    assert [e[0] for e in r.pending["a1"]["events"]] == ["alloc.started", "alloc.healthy"]
    assert r.pending["a2"] == {"healthy": True}
    assert r.wake.is_set()


async def test_flush_sends_one_batch() -> None:
    server = FakeServer()
    r = Reporter(lambda: server, FakeClock())
    r.report("a1", status="running")
    r.report("a2", status="stopped")
    await r.flush()
    assert server.batches == [{"a1": {"status": "running"}, "a2": {"status": "stopped"}}]
    assert r.pending == {}


async def test_while_the_server_is_away_reports_are_kept_merged_and_retried() -> None:
    server, clock = FakeServer(), FakeClock()
    r = Reporter(lambda: server, clock)
    server.away = True
    r.report("a1", status="starting", events=[("alloc.started", "x", "1", "info")])
    task = asyncio.create_task(r.run())
    await until(lambda: clock.sleepers == 1)  # it failed, and waits to retry
    # newer reports meanwhile: merged with the ones put back, events in order
    r.report("a1", status="running", events=[("alloc.healthy", "x", "2", "info")])
    clock.advance(Reporter.RETRY / 2)
    await yield_now()
    assert server.batches == []  # not before RETRY
    server.away = False
    clock.advance(Reporter.RETRY / 2)
    await until(lambda: server.batches != [])
    assert server.batches == [
        {
            "a1": {
                "status": "running",
                "events": [
                    ("alloc.started", "x", "1", "info"),
                    ("alloc.healthy", "x", "2", "info"),
                ],
            }
        }
    ]
    await until(lambda: not r.pending)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_report_the_server_refuses_is_not_retried() -> None:
    server = FakeServer()
    r = Reporter(lambda: server, FakeClock())
    server.reject = True
    r.report("a1", status="running")
    await r.flush()
    assert r.pending == {} and server.batches == []
    server.reject = False
    server.results = {"a2": "deleted"}
    r.report("a2", status="running")
    await r.flush()  # "deleted": final, logged only
    assert r.pending == {}
