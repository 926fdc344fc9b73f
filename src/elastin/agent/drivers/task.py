"""The task driver: a workload is a process, started inside its own cgroup.

Every instance runs under a tiny POSIX ``sh`` supervisor (the *shim*, about 1 MiB) that

1. joins the instance's cgroups (so the workload starts inside them and every byte it
   allocates is charged there),
2. starts the command, waits for it, and
3. writes its exit status to ``<alloc_dir>/status``.

The shim runs in its own session, so killing the agent (even with SIGKILL) leaves the
workload running; a new agent re-attaches with ``recover`` and still learns the real exit
code from the status file. The shim's pid and start time (guarding against pid reuse) are in
the ``Handle``. Exits are awaited with a pidfd, so a recovered instance that is not the
agent's child is waited for just the same.

stdout and stderr go to ``<alloc_dir>/logs/{stdout,stderr}.log``, opened in append mode;
``rotate_logs`` (called by the agent every second) rotates them copy-truncate style when they
pass ``log_max_bytes`` (the workload keeps writing at the new end of the same file), keeping
``log_max_files`` old copies; on a disk without room for a copy it truncates them in place
and says how many bytes were dropped.

Stopping sends SIGTERM to every process of the instance's cgroup, waits the grace period,
then SIGKILLs what is left. An exit status above 128 is reported as death by signal
(status − 128), the shell's convention; an OOM kill is recognised from the cgroup's
``oom_kill`` counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from elastin.agent.drivers.base import (
    DriverInfo,
    ExitResult,
    Handle,
    InstanceConfig,
    StartError,
)
from elastin.agent.drivers.cgroups import Cgroup, CgroupError, detect_cgroups
from elastin.agent.logfiles import Rotation, cap
from elastin.agent.logfiles import rotate as rotate  # re-exported (tests use it)
from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import Usage

SH = "/bin/sh"
# $1 = status file, then cgroup.procs files up to "--", then the command and its arguments.
SHIM = r"""
status="$1"; shift
while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; shift
"$@" &
child=$!
trap 'kill -TERM $child 2>/dev/null' TERM
trap 'kill -INT $child 2>/dev/null' INT
while :; do
  wait $child; st=$?
  kill -0 $child 2>/dev/null || break
done
echo $st > "$status"
exit $st
"""


def proc_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def resolve_command(argv0: str, path_env: str, workdir: str) -> str:
    """The executable for ``argv0`` or a ``StartError`` with the OS error, before forking."""
    if "/" in argv0:
        candidate = argv0 if os.path.isabs(argv0) else os.path.join(workdir, argv0)
        if not os.path.exists(candidate):
            raise StartError(f"cannot start {argv0!r}: No such file or directory (errno 2)")
        if os.path.isdir(candidate) or not os.access(candidate, os.X_OK):
            raise StartError(f"cannot start {argv0!r}: Permission denied (errno 13)")
        return candidate
    found = shutil.which(argv0, path=path_env)
    if found is None:
        raise StartError(
            f"cannot start {argv0!r}: No such file or directory (errno 2); "
            f"it is not on the PATH ({path_env})"
        )
    return found


class TaskDriver:
    name = "task"

    def __init__(self, cgroup_root: str = "elastin", clock: Clock = SYSTEM) -> None:
        self.cgroup_root = cgroup_root
        self.clock = clock
        self.info = detect_cgroups()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._cpu: dict[str, tuple[int, float]] = {}  # alloc -> (cpu ns, monotonic s)

    def fingerprint(self) -> DriverInfo:
        attrs = {"cgroup.version": self.info.version}
        if not self.info.writable:
            return DriverInfo(self.name, False, self.info.reason, attrs)
        if not os.access(SH, os.X_OK):
            return DriverInfo(self.name, False, f"{SH} is missing", attrs)
        return DriverInfo(self.name, True, "", attrs)

    def _cgroup(self, handle: Handle) -> Cgroup:
        return Cgroup(
            str(handle.data["cgroup_root"]),
            str(handle.data["cgroup_name"]),
            version=str(handle.data["cgroup_version"]),
        )

    async def start(self, config: InstanceConfig) -> Handle:
        if not self.info.writable:
            raise StartError(f"the task driver cannot run here: {self.info.reason}")
        alloc_dir = Path(config.alloc_dir)
        workdir = config.workdir or str(alloc_dir / "local")
        if not config.workdir:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        if not os.path.isdir(workdir):
            raise StartError(
                f"cannot start in {workdir!r}: No such file or directory (errno 2); "
                "check the workload's workdir"
            )
        if not config.command:
            raise StartError("the workload has no command")
        exe = resolve_command(config.command[0], config.env.get("PATH", os.defpath), workdir)
        cg = Cgroup(self.cgroup_root, config.alloc_id, version=self.info.version)
        cg.create(config.resources, config.pids_limit)
        status = alloc_dir / "status"
        try:  # every failure from here on removes the cgroup again
            logs = alloc_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            status.unlink(missing_ok=True)
            procs = [str(Path(p) / "cgroup.procs") for p in cg.paths()]
            argv = [SH, "-c", SHIM, "elastin-shim", str(status), *procs, "--"]
            argv += [exe, *config.command[1:]]
            with open(logs / "stdout.log", "ab") as out, open(logs / "stderr.log", "ab") as err:
                proc = subprocess.Popen(
                    argv,
                    env=config.env,
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as e:
            cg.destroy()
            raise StartError(
                f"cannot start {config.command[0]!r}: {e.strerror} (errno {e.errno})"
            ) from None
        except ValueError as e:  # e.g. a NUL byte in an argument or the environment
            cg.destroy()
            raise StartError(f"cannot start {config.command[0]!r}: {e}") from None
        except BaseException:
            cg.destroy()
            raise
        self._children[proc.pid] = proc
        ticks = proc_start_ticks(proc.pid) or 0
        self._cpu[config.alloc_id] = (0, self.clock.monotonic())
        return Handle(
            alloc_id=config.alloc_id,
            driver=self.name,
            pid=proc.pid,
            started_at=self.clock.time(),
            data={
                "start_ticks": ticks,
                "cgroup_root": self.cgroup_root,
                "cgroup_name": config.alloc_id,
                "cgroup_version": self.info.version,
                "status_file": str(status),
                "log_dir": str(logs),
                "log_max_bytes": config.log_max_bytes,
                "log_max_files": config.log_max_files,
            },
        )

    def _alive(self, handle: Handle) -> bool:
        ticks = proc_start_ticks(handle.pid)
        want = int(handle.data.get("start_ticks", 0))
        return ticks is not None and (not want or ticks == want)

    async def recover(self, handle: Handle) -> bool:
        self._cpu.setdefault(
            handle.alloc_id, (self._cgroup(handle).cpu_usage_ns(), self.clock.monotonic())
        )
        return self._alive(handle)

    async def wait(self, handle: Handle) -> ExitResult:
        if self._alive(handle):
            await self._wait_pid(handle.pid)
        child = self._children.pop(handle.pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(1)
        return self._result(handle)

    async def _wait_pid(self, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:  # no pidfd (old kernel): poll
            while proc_start_ticks(pid) is not None:
                await self.clock.sleep(0.1)
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def ready() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    def _result(self, handle: Handle) -> ExitResult:
        cg = self._cgroup(handle)
        oom = cg.oom_kills() > 0
        text = ""
        with contextlib.suppress(OSError):
            text = Path(str(handle.data["status_file"])).read_text().strip()
        if not text.lstrip("-").isdigit():
            return ExitResult(
                None,
                signal.SIGKILL if oom else None,
                oom,
                "" if oom else "the instance's supervisor ended without a status",
            )
        st = int(text)
        if st == 125:
            return ExitResult(st, None, False, "could not join the instance's cgroup")
        if st > 128:
            return ExitResult(None, st - 128, oom or (st - 128 == signal.SIGKILL and oom))
        return ExitResult(st, None, oom)

    async def stop(self, handle: Handle, grace: float) -> None:
        if not self._alive(handle):
            return
        cg = self._cgroup(handle)
        cg.kill_all(signal.SIGTERM, spare=handle.pid)
        deadline = self.clock.monotonic() + grace
        while self.clock.monotonic() < deadline and self._alive(handle):
            if not (cg.pids() - {handle.pid}):
                break
            await self.clock.sleep(0.05)
        cg.kill_all(signal.SIGKILL, spare=handle.pid)
        for _ in range(100):  # the shim writes the status and exits
            if not self._alive(handle):
                return
            await self.clock.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, signal.SIGKILL)

    async def stats(self, handle: Handle) -> Usage:
        cg = self._cgroup(handle)
        now_ns, now = cg.cpu_usage_ns(), self.clock.monotonic()
        last_ns, last = self._cpu.get(handle.alloc_id, (now_ns, now))
        self._cpu[handle.alloc_id] = (now_ns, now)
        millis = (now_ns - last_ns) / 1e6 / (now - last) if now > last else 0.0
        return Usage(cpu=max(0.0, millis), memory=cg.memory_bytes(), sampled_at=self.clock.time())

    def rotate_logs(self, handle: Handle) -> list[Rotation]:
        """Keep the instance's stdout/stderr within ``log_max_bytes`` (``logfiles.cap``: on a
        full disk they are truncated in place and the bytes cut are counted); what was done
        to each file that was cut. The agent calls it every ``LOG_CHECK_SECONDS``."""
        log_dir = str(handle.data.get("log_dir", ""))
        if not log_dir:
            return []
        logs = Path(log_dir)
        max_bytes = int(handle.data.get("log_max_bytes", 10 << 20))
        keep = int(handle.data.get("log_max_files", 3))
        done = [cap(logs / name, max_bytes, keep) for name in ("stdout.log", "stderr.log")]
        return [r for r in done if r.changed]

    async def cleanup(self, handle: Handle) -> None:
        self._cpu.pop(handle.alloc_id, None)
        with contextlib.suppress(CgroupError):
            self._cgroup(handle).destroy()

    def describe(self) -> dict[str, Any]:
        return {"cgroup_root": self.cgroup_root, "cgroup_version": self.info.version}
