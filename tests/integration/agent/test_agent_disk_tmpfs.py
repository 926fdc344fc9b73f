"""A full data disk on the agent side, for real: a small tmpfs mounted as the data
directory (unmounted after each test), a real task writing its log fast, the real task
driver and cgroups.

- A log over its cap on a disk with no free space at all is truncated in place (no copy
  fits), the bytes cut are counted, and the disk gets room back.
- A task writing far more than the disk holds: the agent's log check keeps its logs within
  the cap, counts what it dropped and reports it as an event.
- A handle that cannot be written (its disk is full) stops the started instance: no process
  is left that no agent could find again, and the allocation fails with the reason.
- The GC removes the directories of allocations the agent no longer knows, after the
  retention or earlier when the disk is low, never one the agent runs or holds a handle for.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elastin.agent import runner as runner_mod
from elastin.agent.agent import Agent, AgentConfig
from elastin.agent.drivers.base import Handle, InstanceConfig
from elastin.agent.drivers.cgroups import destroy_root
from elastin.agent.drivers.task import TaskDriver, proc_start_ticks
from elastin.agent.gc import GcPolicy
from elastin.agent.logfiles import cap, rotate
from elastin.agent.runner import AllocRunner
from elastin.model.cluster import Allocation
from elastin.model.workload import RestartPolicy, Workload

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")

MiB = 1 << 20


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path) -> None:
    """Fill the filesystem of ``path``'s directory to the last byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 4096, 1):  # big writes, then what is left of the last block
            for _ in range(100_000):
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    assert free_bytes(path.parent) == 0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def driver() -> Iterator[TaskDriver]:
    root = f"elastin-test-{secrets.token_hex(4)}"
    yield TaskDriver(root)
    destroy_root(root)


class Client:
    """The server, never reached here: reports stay in the agent's reporter."""

    url = "http://127.0.0.1:9"

    async def close(self) -> None:
        return None


def agent_on(data: Path, driver: Any) -> Agent:
    cfg = AgentConfig(
        data_dir=data,
        server_url=Client.url,
        token="t",
        mesh=False,
        dns_port=None,
        metrics_port=None,
        gc_retention=3600.0,
    )
    return Agent(cfg, {"task": driver}, client=Client())  # type: ignore[arg-type]


def test_a_log_over_its_cap_on_a_full_disk_is_truncated_in_place(tmpfs: Path) -> None:
    log = tmpfs / "stdout.log"
    log.write_bytes(b"x" * (2 * MiB))
    fill(tmpfs / "filler")
    assert rotate(log, max_bytes=MiB, keep=3)  # no room for a copy: cut in place
    assert log.stat().st_size == 0
    assert not (tmpfs / "stdout.log.1").exists()  # no partial copy left behind
    assert free_bytes(tmpfs) >= 2 * MiB - 64 * 1024  # the disk has room again
    log.write_bytes(b"y" * (MiB + 1))
    fill(tmpfs / "filler")
    r = cap(log, max_bytes=MiB, keep=3)
    assert (r.rotated, r.dropped) == (False, MiB + 1)
    assert "no room on its disk for a copy" in r.reason


def test_with_room_a_log_is_still_copied(tmpfs: Path) -> None:
    log = tmpfs / "stdout.log"
    log.write_bytes(b"x" * (MiB + 1))
    r = cap(log, max_bytes=MiB, keep=2, reserve=MiB)
    assert (r.rotated, r.dropped) == (True, 0)
    assert (tmpfs / "stdout.log.1").stat().st_size == MiB + 1 and log.stat().st_size == 0


def test_on_a_full_disk_the_oldest_copy_makes_room_for_the_newest_output(tmpfs: Path) -> None:
    """The live file (the newest output, often a crash's) was cut while the older copies
    stayed: the room of the copy a rotation overwrites was not counted."""
    log = tmpfs / "stdout.log"
    (tmpfs / "stdout.log.1").write_bytes(b"1" * (MiB // 2))
    (tmpfs / "stdout.log.2").write_bytes(b"2" * (2 * MiB))
    log.write_bytes(b"n" * (MiB + 1))
    fill(tmpfs / "filler")
    r = cap(log, max_bytes=MiB, keep=2, reserve=0)
    assert (r.rotated, r.dropped) == (True, 0)
    assert (tmpfs / "stdout.log.1").read_bytes()[:1] == b"n"  # the newest output is kept
    assert (tmpfs / "stdout.log.2").read_bytes()[:1] == b"1"  # the oldest one went


WRITER = (
    "import os, time\n"
    "chunk = b'x' * 65535 + b'\\n'\n"
    "for _ in range(400):\n"  # 25 MiB, through a 4 MiB disk
    "    try:\n"
    "        os.write(1, chunk)\n"
    "    except OSError:\n"
    "        pass\n"
    "    time.sleep(0.002)\n"
)


async def test_a_fast_writer_cannot_keep_the_disk_full(tmpfs: Path, driver: TaskDriver) -> None:
    agent = agent_on(tmpfs, driver)
    w = Workload(name="w", type="job", command=(sys.executable, "-c", WRITER))
    alloc = Allocation(id="fast1", app="app", workload="w", index=0, type="job")
    runner = agent._runner(alloc, w)
    agent.runners[alloc.id] = runner
    cfg = runner.config(w)
    # a 1 MiB cap and 3 copies: more than the 4 MiB disk holds
    runner.config = lambda _w: InstanceConfig(  # type: ignore[method-assign]
        **{**cfg.__dict__, "log_max_bytes": MiB, "log_max_files": 3}
    )
    task = asyncio.create_task(runner.run())
    for _ in range(20_000):  # the agent's log check, as keep_logs runs it, until the job ends
        await agent.cap_logs()
        if runner.done.is_set():
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(task, 30)
    logs = tmpfs / "allocs" / alloc.id / "logs"
    # the timestamper may write the job's last lines just after the job ended: the agent's
    # log check (every few seconds in keep_logs) catches them at its next turn, as here
    size = -1
    for _ in range(100):  # bounded: at most about 5 s
        await agent.cap_logs()
        now = (logs / "stdout.log").stat().st_size
        if now == size:
            break
        size = now
        await asyncio.sleep(0.05)
    assert (logs / "stdout.log").stat().st_size <= MiB
    assert free_bytes(tmpfs) > 0
    assert agent.log_dropped_bytes > 0
    events = agent.reporter.pending[alloc.id]["events"]
    dropped = [e for e in events if e[0] == "alloc.logs_dropped"]
    assert dropped and "free space on the agent's data disk" in dropped[0][2]
    assert agent.metrics_view().disk["log_dropped"] == agent.log_dropped_bytes


async def test_a_handle_that_cannot_be_written_leaves_no_process(
    tmp_path: Path, tmpfs: Path, driver: TaskDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_mod, "SAVE_RETRIES", (0.01, 0.01))
    started: list[Handle] = []

    class Recording(TaskDriver):
        async def start(self, config: InstanceConfig) -> Handle:
            h = await super().start(config)
            started.append(h)
            return h

    d = Recording(driver.cgroup_root)
    reports: list[dict[str, Any]] = []

    async def no_deps(_a: Allocation, _w: Workload) -> str:
        return ""

    fill(tmpfs / "filler")  # the handles live on the full disk, the instance elsewhere
    w = Workload(name="web", command=("sleep", "600"), restart=RestartPolicy(mode="always"))
    r = AllocRunner(
        Allocation(id="ghost1", app="app", workload="web", index=0),
        w,
        d,
        alloc_root=tmp_path / "allocs",
        state_dir=tmpfs / "handles",
        report=lambda _id, **f: reports.append(f),
        deps_ready=no_deps,
    )
    await asyncio.wait_for(r.run(), 30)
    assert len(started) == 1
    assert proc_start_ticks(started[0].pid) is None  # stopped: no ghost
    last = [f for f in reports if "status" in f][-1]
    assert last["status"] == "failed" and last["pid"] == 0
    assert "No space left on device" in last["reason"]
    assert "running" not in [f.get("status") for f in reports]


def age(path: Path, seconds: float) -> None:
    t = path.stat().st_mtime - seconds
    for p in (path, *path.iterdir(), *path.glob("logs/*")):  # what gc._last_active reads
        os.utime(p, (t, t), follow_symlinks=False)


async def test_gc_removes_unknown_directories_after_retention_or_when_the_disk_is_low(
    tmpfs: Path,
) -> None:
    from elastin.testing import FakeDriver

    agent = agent_on(tmpfs, FakeDriver())
    allocs = tmpfs / "allocs"
    for name in ("old", "young", "live", "held"):
        (allocs / name / "logs").mkdir(parents=True)
        (allocs / name / "logs" / "stdout.log").write_bytes(b"x" * 256 * 1024)
    deep = allocs / "old"  # a workload's tree deeper than Python's recursion limit
    for _ in range(1500):
        deep = deep / "d"
        os.mkdir(deep)
    for name in ("old", "live", "held"):
        age(allocs / name, 7200)
    agent.state_dir.mkdir(parents=True, exist_ok=True)
    (agent.state_dir / "held.json").write_text("{}")
    agent.runners["live"] = object()  # type: ignore[assignment]
    policy = GcPolicy(retention=3600.0, disk_threshold=0.8)

    assert await agent.collect_allocs(policy) == ["old"]
    assert sorted(p.name for p in allocs.iterdir()) == ["held", "live", "young"]

    filler = tmpfs / "filler"  # the disk is low now: the young one goes too
    filler.write_bytes(b"\0" * (free_bytes(tmpfs) - 64 * 1024))
    assert await agent.collect_allocs(policy) == ["young"]
    assert sorted(p.name for p in allocs.iterdir()) == ["held", "live"]
    assert agent.allocs_collected == 2
