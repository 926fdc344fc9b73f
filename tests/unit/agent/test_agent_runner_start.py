"""What ``AllocRunner`` makes sure of before it starts an instance (issue #11, items 4, 5, 7,
8), on the fake driver and a ``FakeClock``:

* a job's retry waits ``retry_wait(attempt)``, ``starting`` with "retry N of M in Xs (after:
  ...)";
* a restart delay is ``starting`` with "restarting in Xs: ...", cleared when it runs again;
* a fixed port another process holds fails the start at once (no restart loop), naming the
  port and the holder; one another allocation of the node holds is waited for;
* the instance starts only once its upstream listeners are up on the node's proxy (ports
  reported first, a reason naming the upstream and port meanwhile), or after
  ``UPSTREAM_WAIT`` with a warning event;
* ports come from the node's allocator: two runners never share one, and an allocation's
  ports are released when it ends."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elastin.agent.ports import Holder, PortAllocator
from elastin.agent.runner import PORT_WAIT, UPSTREAM_WAIT, AllocRunner
from elastin.clock import yield_now
from elastin.model.cluster import Allocation
from elastin.model.workload import Port, RestartPolicy, Workload
from elastin.testing import FakeClock, FakeDriver


class Reports:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, alloc_id: str, **fields: Any) -> None:
        self.items.append((alloc_id, fields))

    def statuses(self) -> list[tuple[str, str]]:
        return [(f["status"], f.get("reason", "")) for _, f in self.items if "status" in f]

    def events(self) -> list[tuple[str, str, str]]:
        return [(e[0], e[2], e[3]) for _, f in self.items for e in f.get("events", [])]


def make(
    tmp: Path,
    w: Workload,
    driver: FakeDriver,
    clock: FakeClock,
    *,
    alloc_id: str = "a1",
    attempt: int = 0,
    **kw: Any,
) -> tuple[AllocRunner, Reports]:
    reports = Reports()
    alloc = Allocation(
        id=alloc_id, app="app", workload=w.name, index=0, type=w.type, attempt=attempt
    )

    async def deps_ready(_a: Allocation, _w: Workload) -> str:
        return ""

    kw.setdefault("port_taken", lambda _port: None)  # nothing else holds a port
    kw.setdefault("ports", PortAllocator(is_free=lambda _p: True))
    runner = AllocRunner(
        alloc,
        w,
        driver,
        alloc_root=tmp / "allocs",
        state_dir=tmp / "h",
        report=reports,
        deps_ready=deps_ready,
        clock=clock,
        **kw,
    )
    return runner, reports


async def until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await yield_now()


async def test_a_job_retry_waits_its_backoff_with_the_reason(tmp_path: Path) -> None:
    d = FakeDriver()
    clock = FakeClock()
    w = Workload(
        name="j",
        type="job",
        command=("true",),
        retries=3,
        retry_delay=1.0,
        restart=RestartPolicy(max_backoff=30),
    )

    async def previous(a: Allocation) -> str:
        assert a.id == "a1"
        return "exited with code 1"

    runner, reports = make(tmp_path, w, d, clock, attempt=2, previous_failure=previous)
    task = asyncio.create_task(runner.run())
    await until(lambda: clock.sleepers == 1)
    assert reports.statuses() == [("starting", "retry 2 of 3 in 2s (after: exited with code 1)")]
    clock.advance(1.9)
    await yield_now()
    assert not d.started  # not before its retry delay is over
    clock.advance(0.1)
    await until(lambda: len(d.started) == 1)
    await until(lambda: d.running("a1"))
    d.exit("a1", 0)
    await asyncio.wait_for(task, 5)
    assert reports.statuses()[-1][0] == "complete"
    assert ("running", "") in reports.statuses()


async def test_a_first_run_does_not_wait(tmp_path: Path) -> None:
    d = FakeDriver()
    w = Workload(name="j", type="job", command=("true",), retry_delay=5.0)
    runner, _ = make(tmp_path, w, d, FakeClock())
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1"))
    d.exit("a1", 0)
    await asyncio.wait_for(task, 5)


async def test_a_stop_during_the_retry_delay_stops_before_it_starts(tmp_path: Path) -> None:
    d = FakeDriver()
    clock = FakeClock()
    w = Workload(name="j", type="job", command=("true",), retry_delay=10.0)
    runner, reports = make(tmp_path, w, d, clock, attempt=1)
    task = asyncio.create_task(runner.run())
    await until(lambda: clock.sleepers == 1)
    assert reports.statuses()[-1] == ("starting", "retry 1 of 3 in 10s")
    runner.request_stop()
    await asyncio.wait_for(task, 5)
    assert reports.statuses()[-1][0] == "stopped" and not d.started


async def test_a_restart_delay_says_restarting_and_is_cleared_when_it_runs(tmp_path: Path) -> None:
    d = FakeDriver()
    clock = FakeClock()
    w = Workload(name="web", command=("srv",), restart=RestartPolicy(mode="always", backoff=4))
    runner, reports = make(tmp_path, w, d, clock)
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1"))
    d.exit("a1", 1)
    await until(lambda: clock.sleepers == 1)
    assert reports.statuses()[-1] == ("starting", "restarting in 4s: exited with code 1")
    assert runner.state.status == "starting"
    clock.advance(4)
    await until(lambda: len(d.started) == 2 and d.running("a1"))
    await until(lambda: reports.statuses()[-1][0] == "running")
    assert reports.statuses()[-1] == ("running", "")
    runner.request_stop()
    await asyncio.wait_for(task, 5)


async def test_a_fixed_port_held_by_another_process_fails_the_start_once(tmp_path: Path) -> None:
    d = FakeDriver()
    clock = FakeClock(autojump=True)
    w = Workload(
        name="web",
        command=("srv",),
        ports=(Port("http", 8080),),
        restart=RestartPolicy(mode="always", backoff=1),
    )
    holders = {8080: Holder("pid 4242 (python3 -m http.server 8080)")}
    runner, reports = make(tmp_path, w, d, clock, port_taken=holders.get)
    await asyncio.wait_for(runner.run(), 5)
    assert not d.started  # never started, so never restarted
    status, reason = reports.statuses()[-1]
    assert status == "failed"
    assert "port 8080 (http) is already in use by pid 4242 (python3 -m http.server 8080)" in reason
    assert [e[0] for e in reports.events()] == ["alloc.start_failed"]


async def test_a_fixed_port_of_a_stopping_allocation_here_is_waited_for(tmp_path: Path) -> None:
    d = FakeDriver()
    clock = FakeClock()
    pool = PortAllocator(is_free=lambda _p: True)
    assert pool.claim("old", 8080, "app.web[0] old00000: port http") is None
    w = Workload(name="web", command=("srv",), ports=(Port("http", 8080),))
    runner, reports = make(tmp_path, w, d, clock, ports=pool)
    task = asyncio.create_task(runner.run())
    await until(lambda: clock.sleepers == 1)
    assert reports.statuses()[-1] == (
        "starting",
        "waiting for port 8080: app.web[0] old00000: port http holds it",
    )
    assert not d.started
    pool.release("old")
    clock.advance(0.5)
    await until(lambda: d.running("a1"))
    assert pool.holder(8080) is not None and pool.holder(8080).owner == "a1"  # type: ignore[union-attr]
    runner.request_stop()
    await asyncio.wait_for(task, 5)


async def test_it_starts_once_its_upstream_listeners_are_up(tmp_path: Path) -> None:
    d = FakeDriver()
    clock = FakeClock()
    asked: list[Mapping[str, int]] = []
    up = asyncio.Event()

    async def upstreams_down(a: Allocation, w: Workload, ports: Mapping[str, int]) -> list[str]:
        asked.append(dict(ports))
        return [] if up.is_set() else [f"api (127.0.0.1:{ports['upstream.api']})"]

    w = Workload(name="j", type="job", command=("curl",), upstreams=("api",))
    runner, reports = make(tmp_path, w, d, clock, upstreams_down=upstreams_down)
    task = asyncio.create_task(runner.run())
    await until(lambda: clock.sleepers == 1)
    port = runner.ports["upstream.api"]
    starting = [f for _, f in reports.items if f.get("status") == "starting" and f.get("ports")]
    # the ports are reported before it starts: the server adds the listener to the proxy
    assert starting and ("upstream.api", port) in starting[0]["ports"]
    assert starting[0]["reason"] == (
        f"waiting for the node's proxy to listen for upstream api (127.0.0.1:{port})"
    )
    clock.advance(1.0)
    await until(lambda: clock.sleepers == 1)
    assert not d.started
    up.set()
    clock.advance(0.1)
    await until(lambda: d.running("a1"))
    assert d.started[0].env["ELASTIN_UPSTREAM_API"] == f"127.0.0.1:{port}"
    assert not [e for e in reports.events() if e[0] == "alloc.upstreams_not_ready"]
    d.exit("a1", 0)
    await asyncio.wait_for(task, 5)


async def test_it_starts_anyway_after_the_upstream_wait_with_a_warning(tmp_path: Path) -> None:
    d = FakeDriver()
    clock = FakeClock(autojump=True)
    t0 = clock.monotonic()

    async def never(a: Allocation, w: Workload, ports: Mapping[str, int]) -> list[str]:
        return [f"api (127.0.0.1:{ports['upstream.api']})"]

    w = Workload(name="j", type="job", command=("curl",), upstreams=("api",))
    runner, reports = make(tmp_path, w, d, clock, upstreams_down=never)
    task = asyncio.create_task(runner.run())
    await until(lambda: d.running("a1"))
    assert clock.monotonic() - t0 >= UPSTREAM_WAIT
    warned = [e for e in reports.events() if e[0] == "alloc.upstreams_not_ready"]
    assert len(warned) == 1 and warned[0][2] == "warning"
    assert f"api (127.0.0.1:{runner.ports['upstream.api']})" in warned[0][1]
    d.exit("a1", 0)
    await asyncio.wait_for(task, 5)


async def test_runners_of_one_node_never_share_a_port_and_release_them(tmp_path: Path) -> None:
    d = FakeDriver()
    clock = FakeClock(autojump=True)
    # a tiny range: bind-and-release picks would repeat; the allocator cannot
    pool = PortAllocator(30000, 30007, is_free=lambda _p: True)
    w = Workload(
        name="web", command=("srv",), ports=(Port("http", 0), Port("admin", 0)), upstreams=("a",)
    )
    runners = [make(tmp_path, w, d, clock, alloc_id=f"a{i}", ports=pool)[0] for i in range(2)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    await until(lambda: d.running("a0") and d.running("a1"))
    given = [p for r in runners for p in r.ports.values()]
    assert len(given) == 6 and len(set(given)) == 6
    assert set(pool.held()) == set(given)
    runners[0].request_stop()
    await asyncio.wait_for(tasks[0], 5)
    assert set(pool.held()) == set(runners[1].ports.values())
    runners[1].request_stop()
    await asyncio.wait_for(tasks[1], 5)
    assert pool.held() == {}


async def test_a_fixed_port_held_by_an_instance_elsewhere_is_waited_for(tmp_path: Path) -> None:
    # another agent of this machine still stops the instance it replaces: its process holds
    # the port for a while; then the new one starts
    d = FakeDriver()
    clock = FakeClock()
    holders = {8080: Holder("pid 99 (python3 api.py)", instance=True)}
    w = Workload(name="web", command=("srv",), ports=(Port("http", 8080),))
    runner, reports = make(tmp_path, w, d, clock, port_taken=lambda p: holders.get(p))
    task = asyncio.create_task(runner.run())
    await until(lambda: clock.sleepers == 1)
    assert reports.statuses()[-1] == (
        "starting",
        "waiting for port 8080: pid 99 (python3 api.py), an Elastin instance, holds it",
    )
    holders.clear()
    clock.advance(0.5)
    await until(lambda: d.running("a1"))
    assert ("starting", "") in reports.statuses()
    runner.request_stop()
    await asyncio.wait_for(task, 5)


async def test_an_instance_that_never_lets_the_port_go_fails_the_start(tmp_path: Path) -> None:
    d = FakeDriver()
    clock = FakeClock(autojump=True)
    t0 = clock.monotonic()
    holder = Holder("pid 99 (python3 api.py)", instance=True)
    w = Workload(name="web", command=("srv",), ports=(Port("http", 8080),))
    runner, reports = make(tmp_path, w, d, clock, port_taken=lambda p: holder)
    await asyncio.wait_for(runner.run(), 5)
    assert clock.monotonic() - t0 >= PORT_WAIT and not d.started
    status, reason = reports.statuses()[-1]
    assert status == "failed"
    assert reason.startswith("port 8080 (http) is already in use by pid 99 (python3 api.py)")
