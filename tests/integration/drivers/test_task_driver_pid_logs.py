"""The task driver, for real: the pid it reports is the program's own (issue #11, item 7),
each line of the output carries the time it was written (``logs --timestamps``), and a
command runs inside a running instance with its output streamed (``elastin exec``)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from elastin.agent.drivers.base import (
    ExecEnd,
    ExecOutput,
    Handle,
    InstanceConfig,
    StartError,
    supervisor_alive,
    supervisor_pid,
)
from elastin.agent.drivers.cgroups import destroy_root
from elastin.agent.drivers.task import TaskDriver
from elastin.agent.logfiles import stamp_time, unstamp
from elastin.model.resources import Resources

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

PY = sys.executable
WAIT = 30  # seconds: a bound for conditions that hold at once on a sane machine
# says hello, then on SIGTERM its last words (on both streams) and exits 0
POLITE = (
    "import signal, sys, time\n"
    "def bye(*_):\n"
    "    print('last words', flush=True); print('bye on stderr', file=sys.stderr, flush=True)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, bye)\n"
    "print('hello', flush=True); print('oops', file=sys.stderr, flush=True)\n"
    "while True: time.sleep(1)\n"
)


@pytest.fixture
def root() -> Iterator[str]:
    name = f"elastin-test-{secrets.token_hex(4)}"
    yield name
    destroy_root(name)


@pytest.fixture
def driver(root: str) -> TaskDriver:
    d = TaskDriver(root)
    if not d.stamp_logs:
        pytest.skip("no Perl with Time::HiRes here (Debian's perl package)")
    return d


def cfg(tmp: Path, alloc: str, cmd: tuple[str, ...], user: str = "") -> InstanceConfig:
    return InstanceConfig(
        alloc,
        alloc,
        cmd,
        {"PATH": os.environ["PATH"], "GREETING": "hi there"},
        "",
        Resources(200, 64 << 20, 0),
        str(tmp / alloc),
        user=user,
    )


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


async def until_program(h: Handle, argv: list[str]) -> None:
    """Wait until the pid the handle reports runs ``argv`` (setpriv execs it)."""
    async with asyncio.timeout(WAIT):
        while cmdline(h.pid) != argv:
            await asyncio.sleep(0.02)


async def until_in(path: Path, text: str) -> str:
    async with asyncio.timeout(WAIT):
        while text not in (got := path.read_text() if path.exists() else ""):
            await asyncio.sleep(0.02)
    return got


@pytest.mark.parametrize("user", ["", "root"])
async def test_the_pid_is_the_programs_and_a_signal_to_it_ends_the_instance(
    driver: TaskDriver, tmp_path: Path, user: str
) -> None:
    argv = [PY, "-c", "import time; time.sleep(600)"]
    h = await driver.start(cfg(tmp_path, f"pid{user}", tuple(argv), user))
    try:
        assert h.pid != supervisor_pid(h)  # the shim supervises it, as before
        await until_program(h, argv)
        os.kill(h.pid, signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            result = await driver.wait(h)
        assert result.signal == signal.SIGTERM
    finally:
        await driver.stop(h, 1)
        await driver.cleanup(h)


async def test_a_restarted_agent_keeps_both_pids(
    driver: TaskDriver, root: str, tmp_path: Path
) -> None:
    argv = [PY, "-c", "import time; time.sleep(600)"]
    h = await driver.start(cfg(tmp_path, "again", tuple(argv)))
    await until_program(h, argv)
    saved = Handle(h.alloc_id, h.driver, h.pid, h.started_at, dict(h.data))  # what is on disk
    again = TaskDriver(root)
    assert await again.recover(saved) and supervisor_alive(saved)
    async with asyncio.timeout(WAIT):
        await again.stop(saved, 5)
        result = await again.wait(saved)
    await again.cleanup(saved)
    assert result.signal == signal.SIGTERM and cmdline(h.pid) == []


def test_a_handle_of_an_older_agent_names_its_supervisor_by_pid() -> None:
    old = Handle("a", "task", os.getpid(), 0.0, {"start_ticks": 0})
    assert supervisor_pid(old) == os.getpid() and supervisor_alive(old)


async def test_each_line_carries_its_time_and_last_words_are_kept(
    driver: TaskDriver, tmp_path: Path
) -> None:
    before = time.time()
    h = await driver.start(cfg(tmp_path, "stamped", (PY, "-c", POLITE)))
    logs = tmp_path / "stamped" / "logs"
    await until_in(logs / "stderr.log", "oops")
    async with asyncio.timeout(WAIT):
        await driver.stop(h, 10)
        result = await driver.wait(h)
    await driver.cleanup(h)
    after = time.time()
    assert result.exit_code == 0
    out = (logs / "stdout.log").read_bytes()
    err = (logs / "stderr.log").read_bytes()
    assert unstamp(out) == b"hello\nlast words\n"  # the stop's SIGTERM did not cut them
    assert unstamp(err) == b"oops\nbye on stderr\n"
    times = [stamp_time(line) for line in (out + err).splitlines()]
    assert all(t is not None and before <= t <= after for t in times), times


async def test_a_partial_last_line_and_a_long_line_are_kept(
    driver: TaskDriver, tmp_path: Path
) -> None:
    code = "import sys; sys.stdout.write('x' * 70000 + '\\nno newline'); sys.stdout.flush()"
    h = await driver.start(cfg(tmp_path, "partial", (PY, "-c", code)))
    async with asyncio.timeout(WAIT):
        result = await driver.wait(h)
    await driver.cleanup(h)
    assert result.exit_code == 0
    out = unstamp((tmp_path / "partial" / "logs" / "stdout.log").read_bytes())
    assert out == b"x" * 65536 + b"\n" + b"x" * (70000 - 65536) + b"\nno newline\n"


async def test_exec_streams_the_output_and_the_exit_code(
    driver: TaskDriver, tmp_path: Path
) -> None:
    h = await driver.start(cfg(tmp_path, "ex", (PY, "-c", "import time; time.sleep(600)")))
    try:
        script = 'echo "$GREETING as $(id -u)"; pwd; echo to-err >&2; exit 3'
        proc = await driver.exec_start(h, ("sh", "-c", script), {"GREETING": "hi there"})
        items = [i async for i in driver.exec_output(proc, 30)]
        out = b"".join(i.data for i in items if isinstance(i, ExecOutput) and i.stream == "stdout")
        err = b"".join(i.data for i in items if isinstance(i, ExecOutput) and i.stream == "stderr")
        assert items[-1] == ExecEnd(3)
        assert out == f"hi there as {h.data['uid']}\n{tmp_path / 'ex' / 'local'}\n".encode()
        assert err == b"to-err\n"
        proc = await driver.exec_start(h, ("sleep", "600"), {})
        items = [i async for i in driver.exec_output(proc, 0.5)]
        assert items == [ExecEnd(None, signal.SIGKILL, timed_out=True)]
        assert proc.returncode is not None
    finally:
        await driver.stop(h, 1)
        await driver.wait(h)
        await driver.cleanup(h)
    with pytest.raises(StartError, match="not running"):
        await driver.exec_start(h, ("true",), {})
