"""The conformance suite every driver passes (task, fake; container and vm later).

A driver's tests provide a ``DriverKit``: it makes the driver, builds an ``InstanceConfig``
for each of a few behaviours, and makes a *new* driver object to stand for a restarted
agent. ``CHECKS`` are the contract; a test module parametrises over them::

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    async def test_conformance(check, kit): await check(kit)

Behaviours: ``exit0`` and ``exit3`` end at once with that code; ``forever`` runs until
stopped and ends on SIGTERM; ``ignore_term`` ignores SIGTERM; ``missing`` names a program
that does not exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from elastin.agent.drivers.base import Driver, InstanceConfig, StartError

Behaviour = Literal["exit0", "exit3", "forever", "ignore_term", "missing"]


class DriverKit(Protocol):
    driver: Driver

    def config(self, alloc_id: str, behaviour: Behaviour) -> InstanceConfig: ...

    def restarted(self) -> Driver:
        """A new driver object, as a restarted agent would make."""
        ...


WAIT = 30.0  # bound on every wait of the suite; never a timing assertion


async def exit_codes_are_reported(kit: DriverKit) -> None:
    for behaviour, code in (("exit0", 0), ("exit3", 3)):
        h = await kit.driver.start(kit.config(f"codes-{code}", behaviour))  # type: ignore[arg-type]
        async with asyncio.timeout(WAIT):
            res = await kit.driver.wait(h)
        await kit.driver.cleanup(h)
        assert res.exit_code == code, res
        assert res.success == (code == 0)
        assert not res.oom_killed


async def missing_command_fails_to_start(kit: DriverKit) -> None:
    try:
        await kit.driver.start(kit.config("missing", "missing"))
    except StartError as e:
        assert "No such file or directory" in str(e), str(e)
    else:
        raise AssertionError("start of a missing program did not raise StartError")


async def stop_ends_a_running_instance(kit: DriverKit) -> None:
    h = await kit.driver.start(kit.config("stop", "forever"))
    await asyncio.sleep(0.2)
    async with asyncio.timeout(WAIT):
        await kit.driver.stop(h, 5.0)
        res = await kit.driver.wait(h)
    await kit.driver.cleanup(h)
    assert not res.success
    assert res.signal == 15 or res.exit_code not in (None, 0), res


async def stop_kills_after_the_grace_period(kit: DriverKit) -> None:
    h = await kit.driver.start(kit.config("stubborn", "ignore_term"))
    await asyncio.sleep(0.3)
    async with asyncio.timeout(WAIT):
        await kit.driver.stop(h, 0.5)
        res = await kit.driver.wait(h)
    await kit.driver.cleanup(h)
    assert res.signal == 9, res


async def a_restarted_agent_reattaches(kit: DriverKit) -> None:
    h = await kit.driver.start(kit.config("reattach", "forever"))
    await asyncio.sleep(0.2)
    again = kit.restarted()
    assert await again.recover(h)
    usage = await again.stats(h)
    assert usage.memory >= 0 and usage.cpu >= 0
    async with asyncio.timeout(WAIT):
        await again.stop(h, 5.0)
        res = await again.wait(h)
    await again.cleanup(h)
    assert not res.success
    assert not await again.recover(h)


async def stats_measure_a_running_instance(kit: DriverKit) -> None:
    h = await kit.driver.start(kit.config("stats", "forever"))
    try:
        await asyncio.sleep(0.3)
        u1 = await kit.driver.stats(h)
        await asyncio.sleep(0.3)
        u2 = await kit.driver.stats(h)
        assert u1.memory > 0 and u2.memory > 0
        assert u2.cpu >= 0 and u2.sampled_at >= u1.sampled_at
    finally:
        await kit.driver.stop(h, 1.0)
        await kit.driver.wait(h)
        await kit.driver.cleanup(h)


async def fingerprint_says_available(kit: DriverKit) -> None:
    info = kit.driver.fingerprint()
    assert info.name == kit.driver.name
    assert info.available, info.reason


CHECKS: tuple[Callable[[DriverKit], Awaitable[None]], ...] = (
    fingerprint_says_available,
    exit_codes_are_reported,
    missing_command_fails_to_start,
    stop_ends_a_running_instance,
    stop_kills_after_the_grace_period,
    a_restarted_agent_reattaches,
    stats_measure_a_running_instance,
)
