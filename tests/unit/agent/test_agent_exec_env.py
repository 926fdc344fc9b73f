"""``elastin exec`` and an exec health check learn a running instance's environment without
side effects (``agent/api.py`` ``runner_targets``, ``AllocRunner.instance``): they used to
compute it again with ``AllocRunner.config``, which reserves ports — it could claim or take a
port, or raise ``NoFreePort`` (an HTTP 500) just to build an environment. The runner keeps
the configuration it started the instance with; the fake driver and a ``FakeClock``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from elastin.agent.api import runner_targets
from elastin.agent.ports import PortAllocator, Reservation
from elastin.agent.runner import AllocRunner
from elastin.clock import yield_now
from elastin.model.cluster import Allocation
from elastin.model.workload import HealthCheck, Port, Workload
from elastin.testing import FakeClock, FakeDriver


class NoPortOnceStarted(PortAllocator):
    """The node's allocator, that fails the test when anything reserves a port once the
    driver started the instance (only ``config``, before the start, may)."""

    def __init__(self, driver: FakeDriver) -> None:
        super().__init__(is_free=lambda _p: True)
        self.driver = driver

    def take(self, owner: str, what: str) -> int:
        assert not self.driver.started, f"took a port for {what} after the start"
        return super().take(owner, what)

    def claim(self, owner: str, port: int, what: str) -> Reservation | None:
        assert not self.driver.started, f"claimed port {port} for {what} after the start"
        return super().claim(owner, port, what)


W = Workload(
    name="web",
    command=("sleep", "60"),
    ports=(Port("http"), Port("admin", 8081)),
    upstreams=("api",),
    health=HealthCheck(type="exec", command=("true",), interval=1.0),
)


def runner(tmp: Path, driver: FakeDriver, pool: PortAllocator) -> AllocRunner:
    async def deps_ready(_a: Allocation, _w: Workload) -> str:
        return ""

    return AllocRunner(
        Allocation(id="a1", app="shop", workload="web", index=0),
        W,
        driver,
        alloc_root=tmp / "allocs",
        state_dir=tmp / "handles",
        report=lambda _alloc_id, **_f: None,
        deps_ready=deps_ready,
        clock=FakeClock(autojump=True),
        ports=pool,
        port_taken=lambda _port: None,
    )


async def until(cond: object) -> None:
    async with asyncio.timeout(5):
        while not cond():  # type: ignore[operator]
            await yield_now()


async def test_exec_and_the_exec_health_check_take_no_port(tmp_path: Path) -> None:
    d = FakeDriver()
    pool = NoPortOnceStarted(d)
    r = runner(tmp_path, d, pool)
    task = asyncio.create_task(r.run())
    await until(lambda: d.execs)  # the health check ran its command in the instance
    assert r.state.status == "running" and r.state.healthy
    held = pool.held()
    target = runner_targets({"a1": r})("a1")
    assert target is not None and target.handle is r.handle
    assert target.env == d.started[0].env  # the environment it was started with
    assert {"PORT", "ELASTIN_PORT_ADMIN", "ELASTIN_UPSTREAM_API"} <= set(target.env)
    assert pool.held() == held
    r.request_stop()
    await asyncio.wait_for(task, 5)
    assert r.state.status == "stopped"
    # no instance: no environment, still nothing taken
    gone = runner_targets({"a1": r})("a1")
    assert gone is not None and gone.handle is None and gone.env == {}


async def test_exec_on_a_full_node_still_finds_the_instance(tmp_path: Path) -> None:
    # every port of the range in use by other processes: exec needs none of them
    d = FakeDriver()
    pool = PortAllocator(21000, 21010, is_free=lambda _p: True)
    r = runner(tmp_path, d, pool)
    task = asyncio.create_task(r.run())
    await until(lambda: r.state.status == "running")
    pool.is_free = lambda _p: False
    r.ports.pop("upstream.api")  # a port it no longer has (a handle of an older agent)
    target = runner_targets({"a1": r})("a1")
    assert target is not None and target.env["ELASTIN_UPSTREAM_API"].startswith("127.0.0.1:")
    r.request_stop()
    await asyncio.wait_for(task, 5)
