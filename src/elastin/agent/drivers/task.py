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

from elastin.agent.drivers import sandbox
from elastin.agent.drivers.base import (
    DriverInfo,
    ExitResult,
    Handle,
    InstanceConfig,
    StartError,
    proc_start_ticks,
    supervisor_alive,
)
from elastin.agent.drivers.cgroups import Cgroup, CgroupError, detect_cgroups
from elastin.agent.drivers.sandbox import Identity, resolve_user
from elastin.agent.logfiles import Rotation, cap
from elastin.agent.logfiles import rotate as rotate  # re-exported (tests use it)
from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import Usage

SH = "/bin/sh"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"  # util-linux
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
# $1 = status file, then cgroup.procs files up to "--", then the mount plan up to "--" (see
# sandbox.View.mount_ops), then the command (with its setpriv prefix) and its arguments.
SHIM = r"""
status="$1"; shift
while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; shift
while [ "$1" != "--" ]; do
  case "$1" in
    open) eval "exec $2<\"\$3\"" || exit 124; shift 3 ;;
    cover) mount -t tmpfs -o mode=0755,size=64k,nr_inodes=256,nosuid,nodev elastin "$2" \
             || exit 124; shift 2 ;;
    bind) mkdir -p "$3" && mount -c --bind "/proc/self/fd/$2" "$3" || exit 124
          if [ "$4" = ro ]; then mount -c -o remount,bind,ro,nosuid,nodev "$3" || exit 124; fi
          eval "exec $2<&-"; shift 4 ;;
    *) exit 124 ;;
  esac
done; shift
: > "$status.ready"
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
# an exec health check: $1 = workdir, then cgroup.procs files up to "--", then the command
JOIN = r"""
dir="$1"; shift
while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; shift
cd "$dir" || exit 126
exec "$@"
"""
STATUS_NOT_IN_CGROUP = 125
STATUS_NO_VIEW = 124


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


def ready_file(status: Path) -> Path:
    """Where the shim says the instance's view is ready and its command starts."""
    return status.with_name(status.name + ".ready")


def prepare_alloc_dir(alloc_dir: Path, ident: Identity) -> None:
    """Owners and modes of an instance's directory: the directory and ``logs/`` are root's
    and readable by the instance's group only (it reads its logs, cannot replace them or its
    status file); ``local/`` (its HOME and default workdir) and ``tmp/`` are its own."""
    alloc_dir.mkdir(parents=True, exist_ok=True)
    os.chown(alloc_dir, 0, ident.gid)
    os.chmod(alloc_dir, 0o750)
    logs = alloc_dir / "logs"
    logs.mkdir(exist_ok=True)
    os.chown(logs, 0, ident.gid)
    os.chmod(logs, 0o750)
    for name in ("local", "tmp"):
        own = alloc_dir / name
        own.mkdir(exist_ok=True)
        st = os.lstat(own)
        if (st.st_uid, st.st_gid) != (ident.uid, ident.gid):
            chown_tree(own, ident.uid, ident.gid)  # a restart as another dynamic uid
        os.chmod(own, 0o700)


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """chown a tree the workload wrote, never following its symlinks."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def open_log(path: Path, gid: int) -> int:
    """A log file for appending: root's, readable by the instance's group (0640)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        os.fchown(fd, 0, gid)
        os.fchmod(fd, 0o640)
    except BaseException:
        os.close(fd)
        raise
    return fd


def instance_env(env: dict[str, str], ident: Identity, home: str, tmp: str) -> dict[str, str]:
    """The environment with the instance's own HOME, USER and TMPDIR (the spec's win)."""
    out = dict(env)
    if ident.root:
        out.setdefault("HOME", ident.home)
        out.setdefault("USER", "root")
    else:
        out.setdefault("HOME", ident.home or home)
        out.setdefault("USER", ident.name)
        out.setdefault("TMPDIR", tmp)
    out.setdefault("LOGNAME", out["USER"])
    return out


class TaskDriver:
    name = "task"

    def __init__(self, cgroup_root: str = "elastin", clock: Clock = SYSTEM) -> None:
        self.cgroup_root = cgroup_root
        self.clock = clock
        self.info = detect_cgroups()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._cpu: dict[str, tuple[int, float]] = {}  # alloc -> (cpu ns, monotonic s)
        self.uids = sandbox.UidPool()

    def fingerprint(self) -> DriverInfo:
        attrs = {"cgroup.version": self.info.version}
        if not self.info.writable:
            return DriverInfo(self.name, False, self.info.reason, attrs)
        for tool in (SH, UNSHARE, SETPRIV, NSENTER):
            if not os.access(tool, os.X_OK):
                return DriverInfo(
                    self.name, False, f"{tool} is missing (install util-linux)", attrs
                )
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
        if not config.command:
            raise StartError("the workload has no command")
        ident = resolve_user(config.user, self.uids, config.alloc_id)
        try:
            return self._start(config, ident)
        except BaseException:
            self.uids.release(ident.uid)
            raise

    def _start(self, config: InstanceConfig, ident: Identity) -> Handle:
        alloc_dir = Path(config.alloc_dir)
        local, logs = alloc_dir / "local", alloc_dir / "logs"
        prepare_alloc_dir(alloc_dir, ident)
        workdir = config.workdir or str(local)
        if not os.path.isdir(workdir):
            raise StartError(
                f"cannot start in {workdir!r}: No such file or directory (errno 2); "
                "check the workload's workdir"
            )
        exe = resolve_command(config.command[0], config.env.get("PATH", os.defpath), workdir)
        exposes = [sandbox.Expose(str(alloc_dir), True)]
        if config.workdir:
            exposes.append(sandbox.Expose(workdir, not ident.dynamic))
        exposes += [sandbox.Expose(p, False) for p in sandbox.python_of(exe)]
        view = sandbox.View(exposes, ident)
        view.require(workdir, 5, "workdir")
        view.require(exe, 1, "command")
        for arg in config.command[1:]:
            if os.path.isabs(arg):
                view.require(arg, 4, "argument")
        env = instance_env(config.env, ident, str(local), str(alloc_dir / "tmp"))
        cg = Cgroup(self.cgroup_root, config.alloc_id, version=self.info.version)
        cg.create(config.resources, config.pids_limit)
        status = alloc_dir / "status"
        try:  # every failure from here on removes the cgroup again
            status.unlink(missing_ok=True)
            ready_file(status).unlink(missing_ok=True)
            procs = [str(Path(p) / "cgroup.procs") for p in cg.paths()]
            argv = [SH, "-c", SHIM, "elastin-shim", str(status), *procs, "--"]
            if not ident.root:
                argv = [UNSHARE, "--mount", "--propagation", "private", "--", *argv]
                argv += view.mount_ops()
            drop = sandbox.setpriv_argv(ident, SETPRIV, config.bind_low_ports)
            argv += ["--", *drop, exe, *config.command[1:]]
            out_fd = open_log(logs / "stdout.log", ident.gid)
            try:
                err_fd = open_log(logs / "stderr.log", ident.gid)
                try:
                    proc = subprocess.Popen(
                        argv,
                        env=env,
                        cwd=workdir,
                        stdin=subprocess.DEVNULL,
                        stdout=out_fd,
                        stderr=err_fd,
                        start_new_session=True,
                        close_fds=True,
                    )
                finally:
                    os.close(err_fd)
            finally:
                os.close(out_fd)
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
                "uid": ident.uid,
                "gid": ident.gid,
                "user": ident.name,
                "home": ident.home,
                "dynamic": ident.dynamic,
                "named": ident.named,
                "workdir": workdir,
                "namespace": not ident.root,
            },
        )

    def _alive(self, handle: Handle) -> bool:
        return supervisor_alive(handle)

    async def recover(self, handle: Handle) -> bool:
        self.uids.claim(int(handle.data.get("uid", 0)))
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
        if st == STATUS_NOT_IN_CGROUP:
            return ExitResult(st, None, False, "could not join the instance's cgroup")
        if st == STATUS_NO_VIEW:
            return ExitResult(
                st,
                None,
                False,
                "could not prepare the instance's view of the filesystem (see its stderr log)",
            )
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
        self.uids.release(int(handle.data.get("uid", 0)))
        with contextlib.suppress(CgroupError):
            self._cgroup(handle).destroy()

    async def exec_in(self, handle: Handle, command: tuple[str, ...], env: dict[str, str]) -> int:
        """Run ``command`` as the instance: in its cgroups, as its user, in its view of the
        filesystem, in its working directory, with ``env``; answer its exit status. When the
        caller gives up (cancellation, e.g. a check's timeout) the command's whole process
        group is killed."""
        status = Path(str(handle.data["status_file"]))
        ready = ready_file(status)
        sandboxed = bool(handle.data.get("namespace"))
        for _ in range(500):  # the shim prepares the instance's view, then says so
            if not sandboxed or ready.exists() or not self._alive(handle):
                break
            await self.clock.sleep(0.01)
        if not self._alive(handle) or (sandboxed and not ready.exists()):
            raise StartError("the instance is not running")
        procs = [str(Path(p) / "cgroup.procs") for p in self._cgroup(handle).paths()]
        workdir = str(handle.data.get("workdir") or "/")
        ident = Identity(
            int(handle.data.get("uid", 0)),
            int(handle.data.get("gid", 0)),
            str(handle.data.get("user", "")),
            str(handle.data.get("home", "")),
            dynamic=bool(handle.data.get("dynamic")),
            named=bool(handle.data.get("named")),
        )
        alloc_dir = status.parent
        env = instance_env(env, ident, str(alloc_dir / "local"), str(alloc_dir / "tmp"))
        argv = [SH, "-c", JOIN, "elastin-check", workdir, *procs, "--"]
        if sandboxed:
            argv = [NSENTER, f"--target={handle.pid}", "--mount", "--", *argv]
        argv += [*sandbox.setpriv_argv(ident, SETPRIV), *command]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            cwd="/",
            start_new_session=True,
        )
        try:
            return await proc.wait()
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever it left in its group
            if proc.returncode is None:
                await asyncio.shield(proc.wait())

    def describe(self) -> dict[str, Any]:
        return {"cgroup_root": self.cgroup_root, "cgroup_version": self.info.version}
