"""The node's ports survive an agent restart (issue #11, item 5): a new agent re-attaching to
the instances the previous one started reserves their ports again (from their handles), so
it never hands one of them out to another instance or listener; on the fake driver."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from elastin.agent.agent import Agent, AgentConfig
from elastin.agent.ports import NoFreePort, PortAllocator
from elastin.clock import yield_now
from elastin.model.cluster import Allocation
from elastin.model.workload import Port, Workload
from elastin.testing import FakeClock, FakeDriver

WEB = Workload(name="web", command=("srv",), ports=(Port("http", 0),), upstreams=("api",))


def agent(tmp: Path, driver: FakeDriver) -> Agent:
    cfg = AgentConfig(
        data_dir=tmp,
        server_url="http://127.0.0.1:9",
        token="t",
        mesh=False,
        dns_port=None,
        metrics_port=None,
    )
    a = Agent(cfg, {"task": driver}, clock=FakeClock(autojump=True))
    a.reporter.report = lambda alloc_id, **f: None  # type: ignore[method-assign]

    async def workload(_: Allocation) -> Workload:
        return WEB

    a.workload = workload  # type: ignore[method-assign]
    return a


async def test_a_restarted_agent_reserves_the_ports_of_what_it_reattaches(tmp_path: Path) -> None:
    driver = FakeDriver()
    first = agent(tmp_path, driver)
    # a small range: the second agent's allocator below finds its one free port among them
    # (a take binds at most agent.ports.PROBES candidates)
    first.ports = PortAllocator(30000, 30009, is_free=lambda _p: True)
    pending = Allocation(id="w1", app="shop", workload="web", index=0)

    async def run_first() -> None:
        async with asyncio.TaskGroup() as tg:
            await first.sync(tg, [pending])
            await asyncio.Event().wait()  # until the agent stops

    task = asyncio.create_task(run_first())
    async with asyncio.timeout(5):
        while not driver.running("w1"):
            await yield_now()
    ports = dict(first.runners["w1"].ports)
    assert set(ports) == {"http", "upstream.api"}
    assert {p: r.owner for p, r in first.ports.held().items()} == {p: "w1" for p in ports.values()}
    task.cancel()  # the agent stops; its instance keeps running
    await asyncio.gather(task, return_exceptions=True)
    assert driver.running("w1")

    second = agent(tmp_path, driver.restarted())
    # binding tells that only the re-attached instance's ports and one more are free: the
    # one more is the only port it may hand out
    extra = max(ports.values()) + 1
    free = {*ports.values(), extra}
    second.ports = PortAllocator(min(ports.values()), extra, is_free=lambda p: p in free)
    async with asyncio.TaskGroup() as tg:
        await second.recover(tg)
        assert second.runners["w1"].ports == ports
        held = second.ports.held()
        assert {p: r.owner for p, r in held.items()} == {p: "w1" for p in ports.values()}
        assert second.ports.take("other", "x") == extra
        with pytest.raises(NoFreePort):
            second.ports.take("other", "x")
        second.runners["w1"].request_stop()
    assert second.ports.holder(ports["http"]) is None  # released once it ended
