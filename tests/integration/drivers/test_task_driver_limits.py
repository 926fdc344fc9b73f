"""The task driver's limits, for real: cgroup files, OOM kills, pids limits, cpu quota, logs."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from elastin.agent.drivers.base import InstanceConfig
from elastin.agent.drivers.cgroups import Cgroup
from elastin.agent.drivers.task import TaskDriver
from elastin.agent.logfiles import rotate, unstamp
from elastin.model.resources import Resources

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

PY = sys.executable
SLEEP = (PY, "-c", "import time; time.sleep(600)")


def cfg(
    tmp: Path,
    alloc: str,
    cmd: tuple[str, ...],
    cpu: int = 200,
    mem_mi: int = 64,
    pids: int = 0,
    log_max: int = 10 << 20,
) -> InstanceConfig:
    return InstanceConfig(
        alloc,
        alloc,
        cmd,
        {"PATH": os.environ["PATH"]},
        "",
        Resources(cpu, mem_mi << 20, 0),
        str(tmp / alloc),
        pids_limit=pids,
        log_max_bytes=log_max,
        log_max_files=2,
    )


async def test_limits_are_written_to_the_cgroup(driver: TaskDriver, tmp_path: Path) -> None:
    h = await driver.start(cfg(tmp_path, "lim", SLEEP, cpu=250, mem_mi=96, pids=64))
    try:
        cg = Cgroup(driver.cgroup_root, "lim", version=driver.info.version)
        async with asyncio.timeout(10):  # the shim joins, then starts the workload
            while len(cg.pids()) < 2:
                await asyncio.sleep(0.02)
        assert h.pid in cg.pids()
        if cg.version == "v1":
            assert (cg.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "25000"
            assert (cg.dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(
                96 << 20
            )
            assert (cg.dirs["pids"] / "pids.max").read_text().strip() == "64"
        else:
            assert (cg.dirs["unified"] / "cpu.max").read_text().split()[0] == "25000"
            assert (cg.dirs["unified"] / "memory.max").read_text().strip() == str(96 << 20)
        # the workload itself (the shim's child) is inside too
        assert len(cg.pids()) >= 2
    finally:
        await driver.stop(h, 1)
        await driver.wait(h)
        await driver.cleanup(h)


async def test_memory_hog_is_oom_killed_neighbour_lives(driver: TaskDriver, tmp_path: Path) -> None:
    calm = await driver.start(cfg(tmp_path, "calm", SLEEP))
    hog = await driver.start(
        cfg(
            tmp_path, "hog", (PY, "-c", "b=[]\nwhile True: b.append(bytearray(8 << 20))"), mem_mi=48
        )
    )
    async with asyncio.timeout(60):
        res = await driver.wait(hog)
    await driver.cleanup(hog)
    assert res.oom_killed and not res.success
    assert await driver.recover(calm)
    await driver.stop(calm, 1)
    await driver.wait(calm)
    await driver.cleanup(calm)


async def test_fork_bomb_is_capped_by_pids(driver: TaskDriver, tmp_path: Path) -> None:
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(5000):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(600); os._exit(0)\n"
        "        n += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print('forked', n, flush=True)\n"
        "time.sleep(600)\n"
    )
    h = await driver.start(cfg(tmp_path, "bomb", (PY, "-c", bomb), mem_mi=256, pids=24))
    cg = Cgroup(driver.cgroup_root, "bomb", version=driver.info.version)
    log = tmp_path / "bomb" / "logs" / "stdout.log"
    async with asyncio.timeout(30):
        while "forked" not in (log.read_text() if log.exists() else ""):
            await asyncio.sleep(0.1)
    assert len(cg.pids()) <= 24
    forked = int(unstamp(log.read_bytes()).split()[1])
    assert forked < 24
    async with asyncio.timeout(30):
        await driver.stop(h, 1)
        await driver.wait(h)
    await driver.cleanup(h)
    assert not cg.pids()


async def test_cpu_quota_throttles_a_busy_loop(driver: TaskDriver, tmp_path: Path) -> None:
    h = await driver.start(cfg(tmp_path, "busy", (PY, "-c", "while True: pass"), cpu=100))
    try:
        await asyncio.sleep(0.5)
        await driver.stats(h)
        await asyncio.sleep(2.0)
        usage = await driver.stats(h)
        assert usage.cpu < 500  # asked for 100m; unthrottled it would take a whole core
    finally:
        await driver.stop(h, 1)
        await driver.wait(h)
        await driver.cleanup(h)


async def test_logs_are_rotated_while_the_process_writes(
    driver: TaskDriver, tmp_path: Path
) -> None:
    chatty = (
        PY,
        "-c",
        "import time\nfor i in range(100000):\n    print('x' * 100, flush=True)\n"
        "    time.sleep(0.0005)",
    )
    h = await driver.start(cfg(tmp_path, "chatty", chatty, log_max=64 << 10))
    logs = tmp_path / "chatty" / "logs"
    try:
        for _ in range(20):
            await asyncio.sleep(0.2)
            driver.rotate_logs(h)  # what the agent does every LOG_CHECK_SECONDS
        assert (logs / "stdout.log.1").exists()
        assert not (logs / "stdout.log.3").exists()  # keeps log_max_files
        assert (logs / "stdout.log").stat().st_size < 2 * (64 << 10) + 200_000
    finally:
        await driver.stop(h, 1)
        await driver.wait(h)
        await driver.cleanup(h)


def test_rotate_copy_truncates(tmp_path: Path) -> None:
    f = tmp_path / "out.log"
    f.write_text("a" * 100)
    assert not rotate(f, 1000, 2)
    assert rotate(f, 10, 2)
    assert f.read_text() == "" and (tmp_path / "out.log.1").read_text() == "a" * 100
    f.write_text("b" * 100)
    assert rotate(f, 10, 2)
    assert (tmp_path / "out.log.2").read_text() == "a" * 100
    assert (tmp_path / "out.log.1").read_text() == "b" * 100


async def test_workdir_that_does_not_exist_fails_clearly(
    driver: TaskDriver, tmp_path: Path
) -> None:
    c = cfg(tmp_path, "wd", ("true",))
    c = InstanceConfig(
        c.alloc_id, c.name, c.command, c.env, "/nonexistent/dir", c.resources, c.alloc_dir
    )
    from elastin.agent.drivers.base import StartError

    with pytest.raises(StartError, match="No such file"):
        await driver.start(c)


async def test_a_start_that_fails_leaves_no_cgroup(driver: TaskDriver, tmp_path: Path) -> None:
    """A NUL byte in the environment failed in Popen with ValueError, which left the
    instance's cgroup behind in every hierarchy."""
    from dataclasses import replace

    from elastin.agent.drivers.base import StartError

    bad = cfg(tmp_path, "nul", SLEEP)
    bad = replace(bad, env={**bad.env, "A": "x\0y"})
    with pytest.raises(StartError, match="null byte"):
        await driver.start(bad)
    cg = Cgroup(driver.cgroup_root, "nul", version=driver.info.version)
    assert not any(os.path.exists(p) for p in cg.paths())
