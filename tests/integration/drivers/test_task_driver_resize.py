"""The task driver's in-place resize, for real: new limits in the cgroup files with the same
pid; a memory limit below the working set refused; an OOM kill, then the same program running
past the old limit once its limit was raised (issue #13, vertical scaling)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from elastin.agent.drivers.base import (
    Handle,
    InstanceConfig,
    ResizeError,
    ResizeRefused,
    proc_start_ticks,
)
from elastin.agent.drivers.cgroups import Cgroup
from elastin.agent.drivers.task import TaskDriver
from elastin.model.resources import Resources

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

PY = sys.executable
MI = 1 << 20
SLEEP = (PY, "-c", "import time; time.sleep(600)")
# holds 24 MiB (says so in the file "held"), then, once the file "more" exists, 40 MiB more
GROW = (
    PY,
    "-c",
    "import os, time\n"
    "a = bytearray(24 << 20)\n"
    "for i in range(0, len(a), 4096): a[i] = 1\n"
    "open('held', 'w').close()\n"
    "while not os.path.exists('more'): time.sleep(0.02)\n"
    "b = bytearray(40 << 20)\n"
    "for i in range(0, len(b), 4096): b[i] = 1\n"
    "open('grown', 'w').close()\n"
    "time.sleep(600)\n",
)


def cfg(tmp: Path, alloc: str, cmd: tuple[str, ...], cpu: int, mem_mi: int) -> InstanceConfig:
    work = tmp / f"{alloc}-work"
    work.mkdir(exist_ok=True)
    os.chmod(work, 0o777)  # the dynamic user writes its marker files here
    return InstanceConfig(
        alloc,
        alloc,
        cmd,
        {"PATH": os.environ["PATH"]},
        str(work),
        Resources(cpu, mem_mi * MI, 0),
        str(tmp / alloc),
        user="root",
    )


def files(cg: Cgroup) -> tuple[str, str]:
    """The cpu quota and memory limit as the kernel shows them."""
    if cg.version == "v2":
        d = cg.dirs["unified"]
        return (d / "cpu.max").read_text().split()[0], (d / "memory.max").read_text().strip()
    return (
        (cg.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip(),
        (cg.dirs["memory"] / "memory.limit_in_bytes").read_text().strip(),
    )


async def wait_for(path: Path, h: Handle) -> None:
    async with asyncio.timeout(20):
        while not path.exists():
            assert supervisor_running(h), f"the instance ended before {path.name}"
            await asyncio.sleep(0.02)


def supervisor_running(h: Handle) -> bool:
    return proc_start_ticks(h.pid) is not None


async def end(driver: TaskDriver, h: Handle) -> None:
    await driver.stop(h, 1)
    await driver.wait(h)
    await driver.cleanup(h)


async def test_resize_in_place_same_pid(driver: TaskDriver, tmp_path: Path) -> None:
    h = await driver.start(cfg(tmp_path, "rs", SLEEP, cpu=200, mem_mi=64))
    try:
        cg = Cgroup(driver.cgroup_root, "rs", version=driver.info.version)
        ticks = proc_start_ticks(h.pid)
        assert files(cg) == ("20000", str(64 * MI))

        up = await driver.resize(h, Resources(750, 160 * MI))
        assert up == Resources(750, 160 * MI)
        assert files(cg) == ("75000", str(160 * MI))
        if cg.version == "v1" and (cg.dirs["memory"] / "memory.memsw.limit_in_bytes").exists():
            memsw = (cg.dirs["memory"] / "memory.memsw.limit_in_bytes").read_text().strip()
            assert memsw == str(160 * MI)

        down = await driver.resize(h, Resources(100, 48 * MI))
        assert down == Resources(100, 48 * MI)
        assert files(cg) == ("10000", str(48 * MI))
        # the same process all along, still in its cgroup
        assert h.pid in cg.pids()
        assert proc_start_ticks(h.pid) == ticks
    finally:
        await end(driver, h)
    with pytest.raises(ResizeError, match="not running"):
        await driver.resize(h, Resources(100, 64 * MI))


async def test_memory_below_use_is_refused(driver: TaskDriver, tmp_path: Path) -> None:
    c = cfg(tmp_path, "below", GROW, cpu=200, mem_mi=64)
    h = await driver.start(c)
    try:
        await wait_for(Path(c.workdir) / "held", h)
        cg = Cgroup(driver.cgroup_root, "below", version=driver.info.version)
        with pytest.raises(ResizeRefused, match=r"uses .* more than the new memory limit"):
            await driver.resize(h, Resources(200, 16 * MI))
        with pytest.raises(ResizeRefused, match="below the least"):
            await driver.resize(h, Resources(200, 1 * MI))
        assert files(cg) == ("20000", str(64 * MI))  # nothing written
        assert supervisor_running(h) and h.pid in cg.pids()
    finally:
        await end(driver, h)


async def test_oom_then_raised_limit_runs(driver: TaskDriver, tmp_path: Path) -> None:
    # 48 MiB: the program's 24 + 40 MiB do not fit, the kernel kills it
    c = cfg(tmp_path, "oom", GROW, cpu=200, mem_mi=48)
    work = Path(c.workdir)
    h = await driver.start(c)
    try:
        await wait_for(work / "held", h)
        (work / "more").touch()
        async with asyncio.timeout(20):
            result = await driver.wait(h)
        assert result.oom_killed
    finally:
        await driver.cleanup(h)
    (work / "more").unlink()
    (work / "held").unlink()

    # started again under the same limit, raised in place before it grows: it lives
    h = await driver.start(c)
    try:
        await wait_for(work / "held", h)
        cg = Cgroup(driver.cgroup_root, "oom", version=driver.info.version)
        await driver.resize(h, Resources(200, 128 * MI))
        (work / "more").touch()
        await wait_for(work / "grown", h)
        assert cg.memory_bytes() > 48 * MI
        assert cg.oom_kills() == 0
        assert supervisor_running(h) and h.pid in cg.pids()
    finally:
        await end(driver, h)
