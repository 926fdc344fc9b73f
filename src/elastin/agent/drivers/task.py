"""The task driver: a workload is a process, started inside its own cgroup.

Every instance runs under a tiny POSIX ``sh`` supervisor (the *shim*, about 1 MiB) that

1. joins the instance's cgroups (so the workload starts inside them and every byte it
   allocates is charged there),
2. starts the command — through the log timestamper (``STAMPER``) when this node has its
   Perl — says the program's pid on a pipe (``read_pid``), waits for it, and
3. writes its exit status to ``<alloc_dir>/status``.

The shim runs in its own session, so killing the agent (even with SIGKILL) leaves the
workload running; a new agent re-attaches with ``recover`` and still learns the real exit
code from the status file. The ``Handle``'s ``pid`` is the program's own (what ``ps`` shows,
what a signal should reach); the shim's pid and start time (guarding against pid reuse) are
its ``shim_pid`` and ``start_ticks``. Exits are awaited with a pidfd on the shim, so a
recovered instance that is not the agent's child is waited for just the same.

stdout and stderr go to ``<alloc_dir>/logs/{stdout,stderr}.log``, opened in append mode,
each line after the time it was written (``logfiles.STAMP``; docs/drivers.md);
``rotate_logs`` (called by the agent every second) rotates them copy-truncate style when they
pass ``log_max_bytes`` (the workload keeps writing at the new end of the same file), keeping
``log_max_files`` old copies; on a disk without room for a copy it truncates them in place
and says how many bytes were dropped.

``resize`` writes a running instance's new cpu quota and memory limit to its cgroup(s): the
same pid goes on under the new limits (``Cgroup.resize``: a memory limit below the working set
is refused). The handle keeps the limits the instance was started with; the runner starts a
restarted instance with its allocation's current ones.

Stopping sends SIGTERM to every process of the instance's cgroup, waits the grace period,
then SIGKILLs what is left. An exit status above 128 is reported as death by signal
(status − 128), the shell's convention; an OOM kill is recognised from the cgroup's
``oom_kill`` counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import select
import shutil
import signal
import subprocess
from collections.abc import AsyncGenerator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from elastin.agent.drivers import sandbox
from elastin.agent.drivers.base import (
    DriverInfo,
    ExecEnd,
    ExecOutput,
    ExitResult,
    Handle,
    InstanceConfig,
    ResizeError,
    StartError,
    proc_start_ticks,
    supervisor_alive,
    supervisor_pid,
)
from elastin.agent.drivers.cgroups import Cgroup, CgroupError, detect_cgroups
from elastin.agent.drivers.sandbox import Identity, resolve_user
from elastin.agent.logfiles import Rotation, cap, mark_stamped
from elastin.agent.logfiles import rotate as rotate  # re-exported (tests use it)
from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import Usage
from elastin.model.resources import Resources
from elastin.model.text import printable

log = logging.getLogger("elastin.agent.drivers.task")

SH = "/bin/sh"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"  # util-linux
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
# stdin = the pipe on which the program's pid is said (moved to fd 9: the mount plan opens
# 3..8); $1 = status file, then cgroup.procs files up to "--", then the mount plan up to "--"
# (see sandbox.View.mount_ops), then the command (with its setpriv prefix and the
# environment's restorer, ``RESTORE``) and its arguments, led by the word "stamp" and the
# timestamper's words when the output is timestamped. It runs as root with ``root_env``'s
# environment: a fixed PATH, so `mount` and `mkdir` are the system's.
SHIM = r"""
exec 9>&0 </dev/null
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
if [ "$1" = stamp ]; then
  shift; "$@" &
  child=$!
else
  "$@" 9>&- &
  child=$!
  echo $child >&9
fi
exec 9>&-
trap 'kill -TERM $child 2>/dev/null' TERM
trap 'kill -INT $child 2>/dev/null' INT
while :; do
  wait $child; st=$?
  kill -0 $child 2>/dev/null || break
done
echo $st > "$status"
exit $st
"""
# The log timestamper (Perl: perl-base and Time::HiRes, which Debian's perl package has;
# Time::HiRes is loaded after the command started, so the command does not wait for it). The
# shim starts it in the instance's cgroup and namespace, in place of the command; it stays
# root (the instance cannot signal it, stop it or forge its times) and only copies bytes. It
# starts the command (its pid said on fd 9) with its stdout and stderr on two pipes, and
# appends each line to the log its own stdout / stderr is, prefixed by the time its first
# byte was read (RFC 3339 UTC, microseconds, a space: ``STAMP_BYTES`` bytes), one write per
# line; then exits with the command's status (128 + signal when killed, the shell's way).
# It ignores SIGTERM and SIGINT (a stopping program's last words are kept; the stop signals
# the program itself) and ends when both pipes end; once the program exited (reaped with
# WNOHANG on every turn of its loop, woken by a SIGCHLD handler set before the fork, so an
# exit at any moment is seen), when a process the program left keeps the pipes open, it
# ends at their first 50 ms without output, and at the latest 1 s after the exit. A partial
# line at the end gets a newline; a line longer than LINE_MAX bytes is cut into lines of
# that size. It runs as root with ``root_env``'s environment, never the instance's: Perl
# honours PERL5LIB, PERLLIB, PERL5OPT and PERL5DB at its start (and the dynamic loader
# LD_PRELOAD), and those may name directories the workload can write.
STAMPER = r"""
use strict; use warnings;
my @sigs = qw(TERM INT HUP QUIT PIPE);
my @cmd = @ARGV;
$SIG{CHLD} = sub {};  # before the fork: an exit interrupts select below, which reaps it
open(my $said, '>&=', 9) or die "fd 9: $!";
pipe(my $ro, my $wo) or die "pipe: $!"; pipe(my $re, my $we) or die "pipe: $!";
my $pid = fork();
die "fork: $!" unless defined $pid;
if ($pid == 0) {
  open(STDOUT, '>&', $wo) or die "stdout: $!"; open(STDERR, '>&', $we) or die "stderr: $!";
  close($_) for ($said, $ro, $re, $wo, $we);
  $SIG{$_} = 'DEFAULT' for @sigs;
  { no warnings 'exec'; exec { $cmd[0] } @cmd; }
  print STDERR "cannot start $cmd[0]: $!\n"; exit 127;
}
$SIG{$_} = 'IGNORE' for @sigs;
syswrite($said, "$pid\n"); close($said);
close($wo); close($we);
require Time::HiRes;  # after the fork: the command does not wait for it
if (open(my $adj, '>', '/proc/self/oom_score_adj')) { print $adj "-1000\n"; close $adj; }
my ($status, $last) = (undef, 0);
sub reap {  # WNOHANG; -1: not our child any more (cannot happen: we are its only parent)
  return if defined $status;
  my $w = waitpid($pid, 1);
  return unless $w == $pid || $w < 0;
  $status = $w == $pid ? $? : 255 << 8; $last = Time::HiRes::time() + 1;
}
my %in = (fileno($ro) => $ro, fileno($re) => $re);
my %out = (fileno($ro) => \*STDOUT, fileno($re) => \*STDERR);
my (%buf, %t0);
sub stamp {
  my $t = shift; my $s = int($t); my @g = gmtime($s);
  return sprintf('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ ', $g[5] + 1900, $g[4] + 1, @g[3, 2, 1, 0],
                 int(($t - $s) * 1e6));
}
sub put {
  my ($fh, $data) = @_;
  while (length $data) {
    my $n = syswrite($fh, $data);
    if (!defined($n)) { next if $!{EINTR}; return; }
    substr($data, 0, $n) = '';
  }
}
sub take {
  my ($f, $data, $t, $end) = @_;
  my $b = (defined $buf{$f} ? $buf{$f} : '') . $data;
  my $first = defined $t0{$f} ? $t0{$f} : stamp($t);
  my $now = stamp($t);
  my ($out, $at) = ('', 0);
  while (1) {
    my $i = index($b, "\n", $at);
    last if $i < 0 && length($b) - $at < LINE_MAX;
    my $len = $i >= 0 && $i - $at < LINE_MAX ? $i - $at + 1 : LINE_MAX;
    my $line = substr($b, $at, $len);
    $line .= "\n" unless substr($line, -1) eq "\n";
    $out .= ($at == 0 ? $first : $now) . $line;
    $at += $len;
  }
  $buf{$f} = substr($b, $at);
  delete $t0{$f} if $at > 0;
  if (length $buf{$f}) {
    $t0{$f} = $at == 0 ? $first : $now;
    if ($end) { $out .= $t0{$f} . $buf{$f} . "\n"; $buf{$f} = ''; delete $t0{$f}; }
  }
  put($out{$f}, $out) if length $out;
}
while (%in) {
  reap();
  my $rin = ''; vec($rin, $_, 1) = 1 for keys %in;
  my $n = select(my $rout = $rin, undef, undef, $last ? 0.05 : 1);
  if ($n < 0) { next if $!{EINTR}; last; }
  last if $last && ($n == 0 || Time::HiRes::time() > $last);
  next if $n == 0;
  for my $f (keys %in) {
    next unless vec($rout, $f, 1);
    my $got = sysread($in{$f}, my $data, 65536);
    if (!defined($got)) { next if $!{EINTR} || $!{EAGAIN}; $got = 0; }
    if ($got == 0) { take($f, '', Time::HiRes::time(), 1); delete $in{$f}; next; }
    take($f, $data, Time::HiRes::time(), 0);
  }
}
take($_, '', Time::HiRes::time(), 1) for keys %in;
if (!defined $status) { $SIG{CHLD} = 'DEFAULT'; waitpid($pid, 0); $status = $?; }
exit(($status & 127) ? 128 + ($status & 127) : $status >> 8);
""".replace("LINE_MAX", "65536")
STAMP_BYTES = 28  # "2024-05-01T12:00:00.123456Z "
PERL = shutil.which("perl") or "/usr/bin/perl"
NO_STAMPER = "no Perl with Time::HiRes on this node for the log timestamper (Debian's perl)"
# What runs as root before the program — unshare, the shim's sh, mount and mkdir, the
# timestamper's Perl, setpriv; nsenter and the exec shim for exec — never sees the
# instance's environment: the spec's PERL5LIB, PATH, LD_PRELOAD, LD_LIBRARY_PATH... may name
# directories the workload can write (its HOME, /tmp), and Perl, the shell and the dynamic
# loader would run what it planted there, as root. They run with ``root_env``: a fixed PATH
# and every variable of the instance renamed ``ELASTIN_KEPT_<name>`` (names no tool reads).
# The last step before the program, after setpriv dropped root, is ``RESTORE`` (the same
# ``sh``, as the instance's user): it gives each variable its own name back and execs the
# program, so the program gets its environment unchanged, and the loader honours LD_* for
# it alone. (Renaming rather than Perl's taint mode: taint mode ignores PERL5LIB but not
# the loader's variables, nor the shell's PATH.) $1... = the names, "--", the program.
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
KEPT = "ELASTIN_KEPT_"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# a variable the shell refuses to set (an OPTIND that is not a number) is left out
RESTORE = r"""
unset PATH; PATH=/usr/bin:/bin
while [ "$1" != -- ]; do
  command eval "export $1=\"\$ELASTIN_KEPT_$1\"" 2>/dev/null; unset "ELASTIN_KEPT_$1"; shift
done; shift
exec "$@"
"""
# an exec health check: $1 = workdir, then cgroup.procs files up to "--", then the command
JOIN = r"""
dir="$1"; shift
while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; shift
cd "$dir" || exit 126
exec "$@"
"""
EXEC_CHUNK = 64 * 1024  # most bytes of an exec'd command's output passed on at once
PID_WAIT = 30.0  # most seconds the shim may take to start the program (its mount plan)
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
            f"it is not on the PATH ({printable(path_env)})"
        )
    return found


def root_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The environment the driver's root parts run with (a fixed PATH, the instance's
    variables renamed ``ELASTIN_KEPT_<name>``), and the words that restore the instance's
    own just before the program (``RESTORE``: put them after setpriv's, before the
    program's). A name that is not a shell variable's is refused (``StartError``): specs
    allow none."""
    bad = [k for k in env if not ENV_NAME.fullmatch(k)]
    if bad:
        raise StartError(
            f"cannot start: {bad[0][:80]!r} is not a valid environment variable name "
            "(letters, digits and _, not starting with a digit)"
        )
    kept = {"PATH": SAFE_PATH} | {KEPT + k: v for k, v in env.items()}
    # shortest first: NAME takes ELASTIN_KEPT_NAME back before a variable the spec itself
    # calls ELASTIN_KEPT_NAME (kept as ELASTIN_KEPT_ELASTIN_KEPT_NAME) is given its name
    return kept, [SH, "-c", RESTORE, "elastin-env", *sorted(env, key=len), "--"]


def stamper_available() -> bool:
    """Whether the log timestamper can run here: Perl with Time::HiRes (Debian's ``perl``;
    ``perl-base`` alone lacks it)."""
    try:
        done = subprocess.run(
            [PERL, "-MTime::HiRes", "-e", "1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def read_pid(fd: int, timeout: float, clock: Clock = SYSTEM) -> int:
    """The program's pid as the shim says it on the pipe ``fd`` (blocking, up to ``timeout``
    s); 0 when the shim ended first (or said nothing in time)."""
    data = b""
    deadline = clock.monotonic() + timeout
    while b"\n" not in data:
        remaining = deadline - clock.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return 0
        chunk = os.read(fd, 64)
        if not chunk:
            return 0
        data += chunk
    text = data.split(b"\n", 1)[0]
    return int(text) if text.isdigit() else 0


async def _end_exec(proc: asyncio.subprocess.Process) -> None:
    """Kill whatever an exec'd command left in its process group, and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        await asyncio.shield(proc.wait())


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

    def __init__(
        self, cgroup_root: str = "elastin", clock: Clock = SYSTEM, stamp_logs: bool | None = None
    ) -> None:
        """``stamp_logs``: put the time before each line of the instances' output (None:
        when this node has the timestamper's Perl, ``stamper_available``)."""
        self.cgroup_root = cgroup_root
        self.clock = clock
        self.info = detect_cgroups()
        self.stamp_logs = stamper_available() if stamp_logs is None else stamp_logs
        if stamp_logs is None and not self.stamp_logs:  # once, when the agent starts
            log.warning(
                "%s; the output of the instances this agent starts will have no timestamps "
                "(`elastin logs --since/--timestamps` refuse it). Install Debian's perl package "
                "(apt-get install perl) and restart the agent",
                NO_STAMPER,
            )
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._cpu: dict[str, tuple[int, float]] = {}  # alloc -> (cpu ns, monotonic s)
        self.uids = sandbox.UidPool()

    def fingerprint(self) -> DriverInfo:
        attrs = {
            "cgroup.version": self.info.version,
            "logs.timestamps": "1" if self.stamp_logs else f"0 ({NO_STAMPER})",
        }
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
            handle, pid_r = self._start(config, ident)
        except BaseException:
            self.uids.release(ident.uid)
            raise
        try:
            pid = await asyncio.to_thread(read_pid, pid_r, PID_WAIT, self.clock)
        except BaseException:  # cancelled: nothing would supervise it
            self._kill_now(handle)
            self.uids.release(ident.uid)
            raise
        finally:
            os.close(pid_r)
        # the program's own pid (a signal sent to it reaches it); 0: the shim ended before
        # starting it (its status says why), so the handle keeps naming the shim
        return replace(handle, pid=pid) if pid else handle

    def _kill_now(self, handle: Handle) -> None:
        with contextlib.suppress(OSError, CgroupError):
            self._cgroup(handle).kill_all(signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(supervisor_pid(handle), signal.SIGKILL)

    def _start(self, config: InstanceConfig, ident: Identity) -> tuple[Handle, int]:
        """Start the shim; the instance's handle (``pid``: the shim's) and the pipe on which
        the shim says the program's pid."""
        alloc_dir = Path(config.alloc_dir)
        local, logs = alloc_dir / "local", alloc_dir / "logs"
        prepare_alloc_dir(alloc_dir, ident)
        mark_stamped(logs, self.stamp_logs)  # read by the agent's API (logfiles.STAMPED)
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
        shim_env, restore = root_env(env)
        cg = Cgroup(self.cgroup_root, config.alloc_id, version=self.info.version)
        cg.create(config.resources, config.pids_limit)
        status = alloc_dir / "status"
        fds: list[int] = []  # descriptors to close once the shim has its copies
        try:  # every failure from here on removes the cgroup again
            status.unlink(missing_ok=True)
            ready_file(status).unlink(missing_ok=True)
            procs = [str(Path(p) / "cgroup.procs") for p in cg.paths()]
            pid_r, pid_w = os.pipe()
            fds += [pid_r, pid_w]
            fds.append(out_fd := open_log(logs / "stdout.log", ident.gid))
            fds.append(err_fd := open_log(logs / "stderr.log", ident.gid))
            argv = [SH, "-c", SHIM, "elastin-shim", str(status), *procs, "--"]
            if not ident.root:
                argv = [UNSHARE, "--mount", "--propagation", "private", "--", *argv]
                argv += view.mount_ops()
            argv.append("--")
            if self.stamp_logs:
                argv += ["stamp", PERL, "-e", STAMPER]
            drop = sandbox.setpriv_argv(ident, SETPRIV, config.bind_low_ports)
            argv += [*drop, *restore, exe, *config.command[1:]]
            proc = subprocess.Popen(
                argv,
                env=shim_env,  # root's parts never see the instance's (root_env)
                cwd=workdir,
                stdin=pid_w,
                stdout=out_fd,
                stderr=err_fd,
                start_new_session=True,
                close_fds=True,
            )
            fds.remove(pid_r)  # the caller reads the program's pid from it
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
        finally:
            for fd in fds:
                os.close(fd)
        self._children[proc.pid] = proc
        ticks = proc_start_ticks(proc.pid) or 0
        self._cpu[config.alloc_id] = (0, self.clock.monotonic())
        handle = Handle(
            alloc_id=config.alloc_id,
            driver=self.name,
            pid=proc.pid,  # the supervisor's until the program's is known (start)
            started_at=self.clock.time(),
            data={
                "shim_pid": proc.pid,
                "start_ticks": ticks,  # the supervisor's
                "cgroup_root": self.cgroup_root,
                "cgroup_name": config.alloc_id,
                "cgroup_version": self.info.version,
                "status_file": str(status),
                "log_dir": str(logs),
                "log_max_bytes": config.log_max_bytes,
                "log_max_files": config.log_max_files,
                "stamped": self.stamp_logs,
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
        return handle, pid_r

    def _alive(self, handle: Handle) -> bool:
        return supervisor_alive(handle)

    async def recover(self, handle: Handle) -> bool:
        self.uids.claim(int(handle.data.get("uid", 0)))
        if log_dir := str(handle.data.get("log_dir", "")):  # started before the marker was
            with contextlib.suppress(OSError):
                mark_stamped(Path(log_dir), bool(handle.data.get("stamped")))
        self._cpu.setdefault(
            handle.alloc_id, (self._cgroup(handle).cpu_usage_ns(), self.clock.monotonic())
        )
        return self._alive(handle)

    async def wait(self, handle: Handle) -> ExitResult:
        shim = supervisor_pid(handle)
        if self._alive(handle):
            await self._wait_pid(shim)
        child = self._children.pop(shim, None)
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
        shim = supervisor_pid(handle)
        cg.kill_all(signal.SIGTERM, spare=shim)  # the timestamper ignores it: last words kept
        deadline = self.clock.monotonic() + grace
        while self.clock.monotonic() < deadline and self._alive(handle):
            if not (cg.pids() - {shim}):
                break
            await self.clock.sleep(0.05)
        cg.kill_all(signal.SIGKILL, spare=shim)
        for _ in range(100):  # the shim writes the status and exits
            if not self._alive(handle):
                return
            await self.clock.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(shim, signal.SIGKILL)

    async def stats(self, handle: Handle) -> Usage:
        cg = self._cgroup(handle)
        now_ns, now = cg.cpu_usage_ns(), self.clock.monotonic()
        last_ns, last = self._cpu.get(handle.alloc_id, (now_ns, now))
        self._cpu[handle.alloc_id] = (now_ns, now)
        millis = (now_ns - last_ns) / 1e6 / (now - last) if now > last else 0.0
        return Usage(cpu=max(0.0, millis), memory=cg.memory_bytes(), sampled_at=self.clock.time())

    async def resize(self, handle: Handle, resources: Resources) -> Resources:
        """New cpu quota and memory limit for the running instance, written to its cgroup(s)
        (``Cgroup.resize``); the limits now in force. ``ResizeError`` when it is not running,
        ``ResizeRefused`` when the memory limit is below its working set."""
        if not self._alive(handle):
            raise ResizeError("the instance is not running")
        cg = self._cgroup(handle)
        return await asyncio.to_thread(cg.resize, resources)

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
        proc = await self._exec(handle, command, env, asyncio.subprocess.DEVNULL)
        try:
            return await proc.wait()
        finally:
            await _end_exec(proc)

    async def exec_start(
        self, handle: Handle, command: tuple[str, ...], env: dict[str, str]
    ) -> asyncio.subprocess.Process:
        """``exec_in``'s command with its stdout and stderr on pipes, for ``exec_output``."""
        return await self._exec(handle, command, env, asyncio.subprocess.PIPE)

    async def exec_output(
        self, proc: asyncio.subprocess.Process, timeout: float
    ) -> AsyncGenerator[ExecOutput | ExecEnd, None]:
        """What ``proc`` (from ``exec_start``) writes, in chunks as they come, then how it
        ended; after ``timeout`` s its process group is killed (``ExecEnd.timed_out``). When
        the caller stops early, the group is killed too."""
        queue: asyncio.Queue[ExecOutput | None] = asyncio.Queue(maxsize=8)

        async def pump(name: str, reader: asyncio.StreamReader | None) -> None:
            while reader is not None and (chunk := await reader.read(EXEC_CHUNK)):
                await queue.put(ExecOutput(name, chunk))
            await queue.put(None)

        pumps = [
            asyncio.create_task(pump("stdout", proc.stdout)),
            asyncio.create_task(pump("stderr", proc.stderr)),
        ]
        deadline = self.clock.monotonic() + timeout
        try:
            open_ = len(pumps)
            while open_:
                remaining = deadline - self.clock.monotonic()
                try:
                    item = await asyncio.wait_for(queue.get(), max(remaining, 0))
                except TimeoutError:
                    break
                if item is None:
                    open_ -= 1
                else:
                    yield item
            code: int | None = None
            if not open_:  # its output ended: it ended, or closed it and runs on
                remaining = deadline - self.clock.monotonic()
                with contextlib.suppress(TimeoutError):
                    code = await asyncio.wait_for(proc.wait(), max(remaining, 0))
            if code is None:
                await _end_exec(proc)
                yield ExecEnd(None, signal.SIGKILL, timed_out=True)
            elif code < 0:
                yield ExecEnd(None, -code)
            else:
                yield ExecEnd(code)
        finally:
            for t in pumps:
                t.cancel()
            await _end_exec(proc)

    async def _exec(
        self, handle: Handle, command: tuple[str, ...], env: dict[str, str], out: int
    ) -> asyncio.subprocess.Process:
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
        shim_env, restore = root_env(env)  # nsenter and JOIN are root's: see RESTORE
        argv = [SH, "-c", JOIN, "elastin-check", workdir, *procs, "--"]
        if sandboxed:
            argv = [NSENTER, f"--target={supervisor_pid(handle)}", "--mount", "--", *argv]
        argv += [*sandbox.setpriv_argv(ident, SETPRIV), *restore, *command]
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=shim_env,
                cwd="/",
                start_new_session=True,
            )
        except ValueError as e:  # a NUL byte in an argument or the environment
            raise StartError(f"cannot run {command[:1]}: {e}") from None

    def describe(self) -> dict[str, Any]:
        return {"cgroup_root": self.cgroup_root, "cgroup_version": self.info.version}
