"""The agent's drain step, on a fake clock: the wait for the proxies' confirmation has its own
short bound, the wait for the HTTP requests in flight is bounded by the workload's
``stop_grace`` (before SIGTERM, which then has its own ``stop_grace``; docs/spec.md,
docs/mesh.md "Draining"), the wait for TCP connections by ``DRAIN_CONFIRM`` (an idle pooled
one never ends by itself); the runner passes its ``stop_grace`` in; every draining allocation
of a node counts from one shared reading of the proxy, which waits no longer than the
caller's deadline; and how the master CLI's ``show proc`` names the workers a drain asks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from elastin.agent.agent import DRAIN_CONFIRM, Agent, AgentConfig
from elastin.agent.mesh import IN_FLIGHT_FRESH, IN_FLIGHT_LIMIT, MeshManager
from elastin.agent.runner import AllocRunner
from elastin.clock import yield_now
from elastin.mesh.haproxy.process import HaproxyProcess
from elastin.mesh.haproxy.runtime_client import MasterClient, parse_workers
from elastin.mesh.haproxy.stats import InFlight
from elastin.model.cluster import Allocation
from elastin.model.workload import Port, Workload
from elastin.testing import FakeClock, FakeProxy
from elastin.testing.fake_driver import FakeDriver


def agent(tmp: Path, clock: FakeClock) -> Agent:
    cfg = AgentConfig(data_dir=tmp, server_url="http://127.0.0.1:9", token="t", mesh=False)
    return Agent(cfg, {"task": FakeDriver()}, clock=clock)


def draining(
    tmp: Path, stop_grace: float, *, confirm_takes: float = 0.0
) -> tuple[Agent, Allocation, FakeClock, list[float]]:
    """An agent whose runner for ``alloc`` runs a workload with ``stop_grace``; the proxies
    confirm after ``confirm_takes`` s; one request stays in flight for ever."""
    clock = FakeClock(autojump=True)
    a = agent(tmp, clock)
    alloc = Allocation(id="x1", app="shop", workload="api", index=0)
    a.runners[alloc.id] = a._runner(alloc, Workload("api", stop_grace=stop_grace))
    waits: list[float] = []

    async def converged(version: int, wait: float) -> list[str]:
        waits.append(wait)
        await clock.sleep(confirm_takes)
        return []

    async def in_flight(
        _: str, deadline: float | None = None, since: float | None = None
    ) -> InFlight:
        return InFlight(requests=1)

    a.client = SimpleNamespace(mesh_converged=converged)  # type: ignore[assignment]
    a.mesh = SimpleNamespace(in_flight=in_flight)  # type: ignore[assignment]
    return a, alloc, clock, waits


@pytest.mark.parametrize("stop_grace", [2.0, 30.0])
async def test_the_wait_for_requests_in_flight_follows_stop_grace(
    tmp_path: Path, stop_grace: float
) -> None:
    a, alloc, clock, waits = draining(tmp_path, stop_grace)
    t0 = clock.monotonic()
    said = await a.drain(alloc, 7, stop_grace)
    waited = clock.monotonic() - t0
    assert stop_grace <= waited < stop_grace + 0.1  # one poll at most past the bound
    assert said == f"out of every proxy; 1 request(s) still in flight after {stop_grace:g}s"
    assert waits == [DRAIN_CONFIRM]  # the confirmation keeps its own short bound


async def test_the_confirmation_does_not_eat_into_the_wait_for_requests(tmp_path: Path) -> None:
    a, alloc, clock, waits = draining(tmp_path, 3.0, confirm_takes=4.0)
    t0 = clock.monotonic()
    said = await a.drain(alloc, 7, 3.0)
    assert 4.0 + 3.0 <= clock.monotonic() - t0 < 4.0 + 3.0 + 0.1
    assert said.endswith("still in flight after 3s")
    assert waits == [DRAIN_CONFIRM]


def test_show_proc_names_the_current_and_the_old_workers() -> None:
    answer = (
        "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
        "21719           master          1 [failed: 0]   0d00h10m47s     3.0.11\n"
        "# workers\n"
        "26456           worker          0               0d00h00m01s     3.0.11\n"
        "# old workers\n"
        "21722           worker          1               0d00h10m47s     3.0.11\n"
        "# programs\n"
        "21800           foo             0               0d00h00m00s     -\n"
        "\n"
    )
    assert parse_workers(answer) == [26456, 21722]
    assert parse_workers("") == []


async def test_a_proxy_that_does_not_say_is_not_taken_for_an_idle_one(tmp_path: Path) -> None:
    # e.g. while it reloads, the master CLI closes its connections: asked again, not 0
    a, alloc, clock, _ = draining(tmp_path, 4.0)
    answers: list[int | None] = [None, None, 0]

    async def in_flight(
        _: str, deadline: float | None = None, since: float | None = None
    ) -> InFlight | None:
        n = answers.pop(0) if answers else 0
        return None if n is None else InFlight(requests=n)

    a.mesh = SimpleNamespace(in_flight=in_flight)  # type: ignore[assignment]
    assert await a.drain(alloc, 7, 4.0) == "out of every proxy, no request in flight; stopping"
    assert answers == []

    async def silent(_: str, deadline: float | None = None, **__: Any) -> InFlight | None:
        return None

    a.mesh = SimpleNamespace(in_flight=silent)  # type: ignore[assignment]
    t0 = clock.monotonic()
    said = await a.drain(alloc, 7, 4.0)
    assert 4.0 <= clock.monotonic() - t0 < 4.1
    assert "did not say within 4s" in said and said.endswith("; stopping")

    # it said 2 in flight, then nothing more until the grace ran out: the event says the 2
    # (it said "did not say" — the last poll, with no time left, had no answer: review #13)
    words: list[int | None] = [2]

    async def fading(_: str, deadline: float | None = None, **__: Any) -> InFlight | None:
        n = words.pop(0) if words else None
        return None if n is None else InFlight(requests=n)

    a.mesh = SimpleNamespace(in_flight=fading)  # type: ignore[assignment]
    said = await a.drain(alloc, 7, 4.0)
    assert "2 request(s) still in flight after 4s" in said


# ``show stat -1 6 -1`` of a node whose proxy has an idle pooled client connection open to
# x1's TCP port (a database pool: scur 1 until ``timeout server``) and none to its HTTP port
STAT_HEAD = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,mode\n"
IDLE_POOL = (
    STAT_HEAD + "c_shop.db.pg,e_x1-pg,0,0,1,1,,1,UP,tcp\n"
    "c_shop.db.pg,BACKEND,0,0,1,1,,1,UP,tcp\n"
    "c_shop.api.http,e_x1-http,0,0,0,2,,9,UP,http\n"
    "c_shop.api.http,e_x2-http,0,0,2,2,,9,UP,http\n"
    "c_shop.api.http,BACKEND,0,0,2,2,,18,UP,http\n"
)


def with_manager(tmp: Path, stop_grace: float, stat: str) -> tuple[Agent, Allocation, FakeClock]:
    """``draining`` with the agent's real ``MeshManager`` on a ``FakeProxy`` that answers
    ``show stat`` with ``stat``."""
    a, alloc, clock, _ = draining(tmp, stop_grace)
    proxy = FakeProxy()
    proxy.running = True
    proxy.answers["show stat -1 6 -1"] = stat
    a.mesh = MeshManager(lambda: None, "n1", tmp / "mesh", proxy, clock=clock)  # type: ignore[arg-type,return-value]
    return a, alloc, clock


async def test_an_idle_pooled_tcp_connection_does_not_hold_the_stop_for_stop_grace(
    tmp_path: Path,
) -> None:
    a, alloc, clock = with_manager(tmp_path, 60.0, IDLE_POOL)
    t0 = clock.monotonic()
    said = await a.drain(alloc, 7, 60.0)
    assert DRAIN_CONFIRM <= clock.monotonic() - t0 < DRAIN_CONFIRM + 0.1  # not 60 s
    assert said.startswith("out of every proxy, no request in flight; 1 TCP connection(s)")
    assert said.endswith("; stopping")


async def test_an_http_request_in_flight_is_still_waited_for_up_to_stop_grace(
    tmp_path: Path,
) -> None:
    busy_http = IDLE_POOL.replace("e_x1-http,0,0,0", "e_x1-http,0,0,1")
    a, alloc, clock = with_manager(tmp_path, 60.0, busy_http)
    t0 = clock.monotonic()
    said = await a.drain(alloc, 7, 60.0)
    assert 60.0 <= clock.monotonic() - t0 < 60.1
    assert said.startswith("out of every proxy; 1 request(s) still in flight after 60s; 1 TCP")


async def test_tcp_connections_count_until_they_close_or_the_short_bound(tmp_path: Path) -> None:
    a, alloc, clock, _ = draining(tmp_path, 60.0)
    t0 = clock.monotonic()
    seen: list[InFlight] = [InFlight(1, 2), InFlight(0, 2), InFlight(0, 0)]

    async def closing(_: str, deadline: float | None = None, **__: Any) -> InFlight:
        return seen.pop(0) if seen else InFlight()

    a.mesh = SimpleNamespace(in_flight=closing)  # type: ignore[assignment]
    assert await a.drain(alloc, 7, 60.0) == "out of every proxy, no request in flight; stopping"
    assert seen == [] and clock.monotonic() - t0 < 1.0  # the connections closed: at once

    async def mixed(_: str, deadline: float | None = None, **__: Any) -> InFlight:
        # a request for 10 s, an idle pooled connection for ever
        return InFlight(1 if clock.monotonic() - t0 < 10.0 else 0, 1)

    a.mesh = SimpleNamespace(in_flight=mixed)  # type: ignore[assignment]
    t0 = clock.monotonic()
    said = await a.drain(alloc, 7, 60.0)
    assert 10.0 <= clock.monotonic() - t0 < 10.1  # the request, not the connection
    assert "no request in flight; 1 TCP connection(s) still open" in said
    t0 = clock.monotonic()
    said = await a.drain(alloc, 7, 2.0)  # a stop_grace below the short bound: stop_grace
    assert 2.0 <= clock.monotonic() - t0 < 2.1
    assert "still in flight after 2s; 1 TCP connection(s) still open" in said


async def test_drain_waits_the_grace_the_runner_gives_it(tmp_path: Path) -> None:
    a, alloc, clock, _ = draining(tmp_path, 30.0)  # the runner's workload says 30 s
    t0 = clock.monotonic()
    said = await a.drain(alloc, 7, 2.0)
    assert 2.0 <= clock.monotonic() - t0 < 2.1
    assert said.endswith("still in flight after 2s")
    a.runners.clear()  # without a runner (gone meanwhile) the grace given still holds
    t0 = clock.monotonic()
    assert (await a.drain(alloc, 7, 3.0)).endswith("still in flight after 3s")
    assert 3.0 <= clock.monotonic() - t0 < 3.1


async def test_the_runner_passes_its_stop_grace_to_the_drain(tmp_path: Path) -> None:
    calls: list[tuple[str, int, float]] = []

    async def drain(alloc: Allocation, version: int, grace: float) -> str:
        calls.append((alloc.id, version, grace))
        return "drained"

    async def ready(_a: Allocation, _w: Workload) -> str:
        return ""

    driver = FakeDriver()
    w = Workload(name="api", command=("srv",), ports=(Port("http"),), stop_grace=7.0)
    alloc = Allocation(id="x1", app="shop", workload="api", index=0)
    runner = AllocRunner(
        alloc,
        w,
        driver,
        alloc_root=tmp_path / "allocs",
        state_dir=tmp_path / "h",
        report=lambda *_a, **_k: None,
        deps_ready=ready,
        clock=FakeClock(autojump=True),
        drain=drain,
    )
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(5):
        while not driver.running("x1"):
            await yield_now()
    runner.request_stop(drain_after=3)
    await asyncio.wait_for(task, 5)
    assert calls == [("x1", 3, 7.0)]


def reading_manager(tmp: Path) -> tuple[MeshManager, FakeProxy, FakeClock]:
    clock = FakeClock()
    proxy = FakeProxy()
    proxy.running = True
    proxy.answers["show stat -1 6 -1"] = IDLE_POOL
    return MeshManager(lambda: None, "n1", tmp / "mesh", proxy, clock=clock), proxy, clock  # type: ignore[arg-type,return-value]


async def test_a_mass_stop_reads_the_proxy_once_per_poll_period(tmp_path: Path) -> None:
    m, proxy, clock = reading_manager(tmp_path)
    allocations = [f"x{i}" for i in range(50)]  # 50 instances of the node draining at once
    counts = await asyncio.gather(*(m.in_flight(x) for x in allocations))
    assert proxy.commands == ["show stat -1 6 -1"]  # one reading for all 50
    assert counts[1] == InFlight(requests=0, connections=1)
    assert counts[2] == InFlight(requests=2) and counts[3] == InFlight()
    await asyncio.gather(*(m.in_flight(x) for x in allocations))
    assert len(proxy.commands) == 1  # still fresh: the same reading
    clock.advance(IN_FLIGHT_FRESH)
    await asyncio.gather(*(m.in_flight(x) for x in allocations))
    assert len(proxy.commands) == 2


async def test_a_reading_from_before_the_drain_began_is_not_taken(tmp_path: Path) -> None:
    """Another drain's reading, taken before the proxies dropped this allocation, may miss
    a request sent to it just before: a drain takes only a reading begun since it began
    (review of #13: the instance was stopped with a request still on it)."""
    m, proxy, clock = reading_manager(tmp_path)
    assert await m.in_flight("x1") == InFlight(connections=1)  # another drain's reading
    # meanwhile the proxy sent x3 a request, then dropped x3 from its endpoints
    proxy.answers["show stat -1 6 -1"] = (
        IDLE_POOL + "c_shop.api.http,e_x3-http,0,0,1,1,,1,UP,http\n"
    )
    clock.advance(IN_FLIGHT_FRESH / 10)  # the other reading is still fresh
    busy = await m.in_flight("x3", since=clock.monotonic())  # x3's drain begins now
    assert busy == InFlight(requests=1)  # its own reading, not the other's (0)
    assert len(proxy.commands) == 2


async def test_callers_join_the_reading_under_way(tmp_path: Path) -> None:
    m, proxy, _ = reading_manager(tmp_path)
    proxy.stalled = asyncio.Event()
    waiting = [asyncio.create_task(m.in_flight(f"x{i}")) for i in range(50)]
    for _ in range(5):
        await yield_now()
    assert len(proxy.each_worker_calls) == 1 and not any(t.done() for t in waiting)
    proxy.stalled.set()
    counts = await asyncio.gather(*waiting)
    assert counts[1] == InFlight(connections=1) and len(proxy.each_worker_calls) == 1


async def test_a_stalled_proxy_is_waited_for_no_longer_than_the_callers_deadline(
    tmp_path: Path,
) -> None:
    m, proxy, clock = reading_manager(tmp_path)
    proxy.stalled = asyncio.Event()  # never set: the master CLI does not answer
    late: Any = await m.in_flight("x1", clock.monotonic() + 0.02)
    assert late is None  # did not say in time (the drain asks again, or stops)
    ((command, timeout),) = proxy.each_worker_calls
    # the shared reading has its own bound, not its first caller's deadline (a caller with
    # little time left would have cut it short for every other drain: review of #13)
    assert command == "show stat -1 6 -1" and timeout == IN_FLIGHT_LIMIT
    # a caller with no time left gets no answer from a reading still under way
    assert await m.in_flight("x2", clock.monotonic()) is None
    assert len(proxy.each_worker_calls) == 1  # it joined the reading under way
    proxy.stalled.set()
    reading = m._in_flight  # the reading under way ends once the proxy answers
    assert reading is not None and (await reading or {})["x1-pg"] == InFlight(connections=1)


async def test_each_worker_is_bounded_as_a_whole(tmp_path: Path) -> None:
    # a master CLI that answers ``show proc`` and then stalls on every worker's command:
    # without a bound for the whole, one reading would take the client's timeout per worker
    asked: list[str] = []
    never = asyncio.Event()

    async def master(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().strip()
        asked.append(line)
        if line == "show proc":
            writer.write(
                b"#<PID> <type> <reloads> <uptime> <version>\n"
                b"100 master 1 0d00h00m01s 3.0.11\n# workers\n"
                b"102 worker 0 0d00h00m01s 3.0.11\n# old workers\n"
                b"101 worker 1 0d00h00m09s 3.0.11\n\n"
            )
        else:
            await never.wait()
        writer.close()

    sock = tmp_path / "m.sock"
    server = await asyncio.start_unix_server(master, str(sock))
    proxy = HaproxyProcess(tmp_path, "haproxy")
    proxy.has_master_cli = lambda: True  # type: ignore[method-assign]
    proxy.master = MasterClient(sock, timeout=3600.0)
    try:
        async with asyncio.timeout(30):  # a safety net only: the bound is 0.1 s
            with pytest.raises(TimeoutError):
                await proxy.each_worker("show stat -1 6 -1", 0.1)
        assert asked == ["show proc", "@!102 show stat -1 6 -1"]  # the first worker stalled
    finally:
        never.set()
        server.close()
        await server.wait_closed()
