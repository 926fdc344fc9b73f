"""The log timestamper for real (review of issue #11): it never misses its program's exit,
and an instance started without it is known as such — the agent's API neither cuts "stamps"
off its lines (a workload could forge them) nor pretends to filter it by time."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from elastin.agent.api import AgentApi
from elastin.agent.drivers.base import Handle, InstanceConfig
from elastin.agent.drivers.cgroups import destroy_root
from elastin.agent.drivers.task import TaskDriver
from elastin.agent.logfiles import is_stamped
from elastin.model.resources import Resources

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

WAIT = 30  # seconds: a bound for what ends at once on a sane machine
TOKEN = "cluster-t0ken"
FORGED = b"2020-01-01T00:00:00.000000Z forged\n"


@pytest.fixture
def root() -> Iterator[str]:
    name = f"elastin-test-{secrets.token_hex(4)}"
    yield name
    destroy_root(name)


def cfg(tmp: Path, alloc: str, script: str) -> InstanceConfig:
    return InstanceConfig(
        alloc,
        alloc,
        ("/bin/sh", "-c", script),
        {"PATH": "/usr/bin:/bin"},
        "",
        Resources(200, 64 << 20, 0),
        str(tmp / "allocs" / alloc),
    )


async def finish(driver: TaskDriver, h: Handle) -> None:
    await driver.stop(h, 0.5)
    await driver.wait(h)
    await driver.cleanup(h)


async def test_a_program_that_leaves_a_child_behind_is_seen_to_exit(
    root: str, tmp_path: Path
) -> None:
    """The program exits at once, its child keeps the output pipes open: the timestamper
    still learns of the exit (every time: it could miss one that came before its SIGCHLD
    handler was set) and ends once the pipes are quiet."""
    driver = TaskDriver(root)
    if not driver.stamp_logs:
        pytest.skip("no Perl with Time::HiRes here (Debian's perl package)")
    for i in range(20):
        h = await driver.start(cfg(tmp_path, f"{i:x}", "sleep 600 & exit 3"))
        try:
            async with asyncio.timeout(WAIT):
                result = await driver.wait(h)
            assert result.exit_code == 3, (i, result)
        finally:
            await finish(driver, h)


async def test_without_the_timestamper_nothing_is_unstamped_and_since_is_refused(
    root: str, tmp_path: Path
) -> None:
    plain = TaskDriver(root, stamp_logs=False)
    h = await plain.start(cfg(tmp_path, "a1", f"printf '{FORGED.decode().strip()}\\n'"))
    async with asyncio.timeout(WAIT):
        await plain.wait(h)
    await plain.cleanup(h)
    logs = tmp_path / "allocs" / "a1" / "logs"
    assert not is_stamped(logs)
    assert (logs / "stdout.log").read_bytes() == FORGED  # as the workload wrote it

    api = AgentApi(tmp_path / "allocs", tmp_path / "haproxy.log", TOKEN)
    await api.start()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://{api.address}",
            headers={"authorization": f"Bearer {TOKEN}"},
            timeout=WAIT,
        ) as c:
            path = "/v1/allocations/a1/logs"
            assert (await c.get(path)).content == FORGED  # not "forged\n": no stamp cut off
            for params in ({"since": "10m"}, {"timestamps": "true"}):
                got = await c.get(path, params=params)
                assert got.status_code == 422, (params, got.text)
                assert "has no timestamps" in got.json()["message"]
                assert "perl" in got.json()["hint"]
            assert (await c.get(path, params={"timestamps": "false"})).content == FORGED
    finally:
        await api.close()


def test_the_node_says_whether_it_stamps_logs(root: str) -> None:
    plain = TaskDriver(root, stamp_logs=False).fingerprint().attributes["logs.timestamps"]
    assert plain.startswith("0 (") and "perl" in plain
    assert TaskDriver(root, stamp_logs=True).fingerprint().attributes["logs.timestamps"] == "1"


async def test_a_stamped_instance_is_marked_and_a_reattached_one_too(
    root: str, tmp_path: Path
) -> None:
    driver = TaskDriver(root)
    if not driver.stamp_logs:
        pytest.skip("no Perl with Time::HiRes here (Debian's perl package)")
    h = await driver.start(cfg(tmp_path, "b2", "exec sleep 600"))
    logs = tmp_path / "allocs" / "b2" / "logs"
    try:
        assert is_stamped(logs)
        # an instance an agent of the version before the marker started: its handle says so
        (logs / "stamped").unlink()
        again = TaskDriver(root, stamp_logs=False)
        assert await again.recover(h)
        assert is_stamped(logs)
    finally:
        await finish(driver, h)
