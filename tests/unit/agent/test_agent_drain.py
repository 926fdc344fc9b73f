"""The agent's drain step, on a fake clock: the wait for the proxies' confirmation has its own
short bound, the wait for the requests in flight is bounded by the workload's ``stop_grace``
(before SIGTERM, which then has its own ``stop_grace``; docs/spec.md, docs/mesh.md
"Draining"); and how the master CLI's ``show proc`` names the workers a drain asks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from elastin.agent.agent import DRAIN_CONFIRM, Agent, AgentConfig
from elastin.mesh.haproxy.runtime_client import parse_workers
from elastin.model.cluster import Allocation
from elastin.model.workload import Workload
from elastin.testing import FakeClock
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

    async def in_flight(_: str) -> int:
        return 1

    a.client = SimpleNamespace(mesh_converged=converged)  # type: ignore[assignment]
    a.mesh = SimpleNamespace(in_flight=in_flight)  # type: ignore[assignment]
    return a, alloc, clock, waits


@pytest.mark.parametrize("stop_grace", [2.0, 30.0])
async def test_the_wait_for_requests_in_flight_follows_stop_grace(
    tmp_path: Path, stop_grace: float
) -> None:
    a, alloc, clock, waits = draining(tmp_path, stop_grace)
    t0 = clock.monotonic()
    said = await a.drain(alloc, 7)
    waited = clock.monotonic() - t0
    assert stop_grace <= waited < stop_grace + 0.1  # one poll at most past the bound
    assert said == f"out of every proxy; 1 request(s) still in flight after {stop_grace:g}s"
    assert waits == [DRAIN_CONFIRM]  # the confirmation keeps its own short bound


async def test_the_confirmation_does_not_eat_into_the_wait_for_requests(tmp_path: Path) -> None:
    a, alloc, clock, waits = draining(tmp_path, 3.0, confirm_takes=4.0)
    t0 = clock.monotonic()
    said = await a.drain(alloc, 7)
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

    async def in_flight(_: str) -> int | None:
        return answers.pop(0) if answers else 0

    a.mesh = SimpleNamespace(in_flight=in_flight)  # type: ignore[assignment]
    assert await a.drain(alloc, 7) == "out of every proxy, no request in flight; stopping"
    assert answers == []

    async def silent(_: str) -> int | None:
        return None

    a.mesh = SimpleNamespace(in_flight=silent)  # type: ignore[assignment]
    t0 = clock.monotonic()
    said = await a.drain(alloc, 7)
    assert 4.0 <= clock.monotonic() - t0 < 4.1
    assert "did not say within 4s" in said and said.endswith("; stopping")
