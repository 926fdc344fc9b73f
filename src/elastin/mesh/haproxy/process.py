"""The I/O around HAProxy: validate a configuration with ``haproxy -c`` and start / reload
one master-worker HAProxy (``HaproxyProcess``, the agent's ``Proxy``); its runtime API goes
through the asynchronous ``RuntimeClient`` (``runtime_client.py``).

Starting and reloading block (``haproxy -c``, waiting for the socket): ``ensure`` does it in
the calling thread (scripts, tests), ``load`` in a worker thread for the agent's event loop.
``runtime`` and ``HaproxyProcess.send`` are blocking runtime API calls for scripts, tests and
benchmarks only; the agent never uses them.

The master CLI: HAProxy is started with ``-S <dir>/master.sock,mode,600`` (kept across reloads:
the master re-executes itself with the same arguments), through which ``each_worker`` asks
every live worker — the current one and the old ones a reload left finishing the requests
they carry — what the runtime socket asks the current one alone (``master_cli_argument``
checks the path first; a path HAProxy cannot bind leaves the master without a CLI, logged).
A master without a CLI (one an earlier Elastin started, adopted) is asked through the runtime
socket, as before.

Exceptions: ``HaproxyError`` with HAProxy's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from elastin.clock import SYSTEM, Clock
from elastin.mesh.haproxy.render import LUA_SCRIPT, Paths
from elastin.mesh.haproxy.runtime_client import (
    HaproxyError,
    MasterClient,
    RuntimeClient,
    WorkerGone,
    refused,
)
from elastin.mesh.model import Listener

log = logging.getLogger(__name__)

__all__ = [
    "HaproxyError",
    "HaproxyProcess",
    "check_config",
    "haproxy_binary",
    "haproxy_version",
    "master_cli_argument",
    "older_than_wanted",
    "refused",
    "runtime",
]


# the oldest HAProxy that resets an HTTP/2 stream whose response its endpoint cut short
# (2.6 ends it cleanly: the caller takes a truncated answer for a whole one)
RESETS_CUT_STREAMS = (3, 0)


def haproxy_binary() -> str | None:
    """The haproxy the mesh runs: ``$ELASTIN_HAPROXY`` when set (a path to an executable);
    else the one ``make setup`` built into this Python environment (HAProxy 3.0,
    ``scripts/haproxy.sh``); else one on PATH or in /usr/sbin (where Debian installs it).
    None when there is none, or when ``$ELASTIN_HAPROXY`` names no executable file (logged
    as an error: the mesh stays off rather than running another binary than the one asked
    for)."""
    chosen = os.environ.get("ELASTIN_HAPROXY", "")
    if chosen:
        if os.path.isfile(chosen) and os.access(chosen, os.X_OK):
            return chosen
        log.error(
            "ELASTIN_HAPROXY=%r is not an executable file: set it to the path of a haproxy"
            " binary, or unset it to use the one `make setup` built",
            chosen,
        )
        return None
    beside = Path(sys.prefix) / "bin" / "haproxy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def haproxy_version(binary: str) -> tuple[int, int] | None:
    """The (major, minor) version ``binary -v`` reports; None when it says none."""
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"version (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def older_than_wanted(binary: str) -> str | None:
    """What an HAProxy older than 3.0 gets wrong, to log once when the mesh starts it."""
    version = haproxy_version(binary)
    if version is None or version >= RESETS_CUT_STREAMS:
        return None
    return (
        f"{binary} is HAProxy {version[0]}.{version[1]}: a response an endpoint cuts short"
        " reaches HTTP/2 and gRPC callers as a complete one (HAProxy 3.0 resets the stream);"
        " `make setup` builds HAProxy 3.0 (scripts/haproxy.sh), or set ELASTIN_HAPROXY"
    )


def check_config(path: str, binary: str = "haproxy") -> None:
    """Raise ``HaproxyError`` with HAProxy's messages when ``path`` is not a valid config."""
    proc = subprocess.run(
        [binary, "-c", "-q", "-f", path], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        raise HaproxyError(f"haproxy rejected {path}:\n{proc.stdout}{proc.stderr}".strip())


# a unix socket's path: at most this many bytes (sun_path is 108, with its terminating NUL)
SOCKET_PATH_MAX = 107


def master_cli_argument(path: Path) -> list[str] | str:
    """``haproxy``'s arguments for a master CLI on the unix socket ``path`` (absolute, only
    the owner may connect: ``mode 600``), or why there can be none: ``-S`` takes bind
    options after commas, and a unix socket's path has at most ``SOCKET_PATH_MAX`` bytes."""
    where = str(path.absolute())
    if "," in where:
        return f"the path {where} has a comma, which HAProxy's -S reads as a bind option"
    if len(os.fsencode(where)) > SOCKET_PATH_MAX:
        return f"the path {where} is longer than a unix socket's ({SOCKET_PATH_MAX} bytes)"
    return ["-S", f"{where},mode,600"]


def runtime(socket_path: str, command: str, timeout: float = 5.0) -> str:
    """Send one command to the runtime API; return its answer (blocking: for scripts and
    tests; the agent uses ``RuntimeClient``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    answer = b"".join(chunks).decode(errors="replace")
    if refused(answer):
        raise HaproxyError(f"haproxy refused {command!r}: {answer.strip()}")
    return answer


class HaproxyProcess:
    """One HAProxy in master-worker mode, started detached so that it outlives the agent.

    ``ensure(config)`` writes and checks the configuration, then starts HAProxy — or, when
    one is already running (this agent's or a previous agent's, found by its pid file),
    reloads it hitlessly (SIGUSR2 to the master; listening sockets are passed to the new
    workers); ``load(config)`` does the same off the event loop. ``alive()`` tells whether the
    master still runs; ``command`` uses the runtime API (``runtime``, a ``RuntimeClient``),
    ``each_worker`` the master CLI (``MasterClient``) to ask every live worker.
    """

    def __init__(self, directory: Path, binary: str, clock: Clock = SYSTEM) -> None:
        self.dir = directory
        self.binary = binary
        self.clock = clock
        self.config = directory / "haproxy.cfg"
        self.pid_file = directory / "haproxy.pid"
        self.socket = directory / "haproxy.sock"
        self.lua_file = directory / "elastin.lua"
        self.runtime = RuntimeClient(self.socket)
        self.master_socket = directory / "master.sock"
        self.master = MasterClient(self.master_socket)
        self.reloads = 0
        self.starts = 0
        self._child: subprocess.Popen[bytes] | None = None  # when this process started it
        self._pid = 0  # the master's pid, once known

    def _is_master(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z" and b"haproxy" in cmdline and str(self.config).encode() in cmdline

    def master_pid(self) -> int | None:
        """The running master: the one this object started, else the pid file's (a master a
        previous agent started). The pid is remembered, because HAProxy rewrites the pid file
        while it reloads."""
        if self._pid and self._is_master(self._pid):
            return self._pid
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if self._is_master(pid):
            self._pid = pid
            return pid
        return None

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is this proxy's master or one of its workers (they share the
        master's process group: it is started in a session of its own)."""
        master = self.master_pid()
        if master is None:
            return False
        try:
            return os.getpgid(pid) == master
        except OSError:
            return False

    def alive(self) -> bool:
        if self._child is not None and self._child.poll() is not None:
            self._child = None  # reaped: no zombie left behind
        return self.master_pid() is not None

    def paths(self) -> Paths:
        """Where this proxy's files are, for ``render``."""
        return Paths(str(self.socket), str(self.pid_file), str(self.lua_file))

    def ensure(self, text: str) -> str:
        """Apply a full configuration: start or reload. Returns "started" or "reloaded"."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lua_file.write_text(LUA_SCRIPT)
        candidate = self.dir / "haproxy.cfg.new"
        candidate.write_text(text)
        check_config(str(candidate), self.binary)
        candidate.replace(self.config)
        pid = self.master_pid()
        if pid is not None:
            os.kill(pid, signal.SIGUSR2)
            self.reloads += 1
            return "reloaded"
        self.socket.unlink(missing_ok=True)
        self.master_socket.unlink(missing_ok=True)
        master_cli = master_cli_argument(self.master_socket)
        if isinstance(master_cli, str):
            log.warning(
                "HAProxy runs without a master CLI (%s): a drain then counts the requests"
                " in flight on its current worker only, not on the old ones a reload leaves"
                " finishing; use a data directory whose path has no comma and is shorter",
                master_cli,
            )
            master_cli = []
        out = open(self.dir / "haproxy.log", "ab")  # noqa: SIM115 - owned by the child
        self._child = subprocess.Popen(
            # the config names the pidfile
            [self.binary, "-W", *master_cli, "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        self._pid = self._child.pid  # -W without -D: the process we started is the master
        out.close()
        deadline = self.clock.monotonic() + 10
        while self.clock.monotonic() < deadline:
            if self.socket.exists() and self.alive():
                self.starts += 1
                return "started"
            time.sleep(0.02)  # blocking: in the caller's thread (``load``: a worker thread)
        raise HaproxyError(f"haproxy did not start; see {self.dir / 'haproxy.log'}")

    async def load(self, text: str) -> str:
        """``ensure`` in a worker thread: the event loop goes on meanwhile."""
        return await asyncio.to_thread(self.ensure, text)

    async def command(self, command: str) -> str:
        """One runtime API command (``RuntimeClient.command``)."""
        return await self.runtime.command(command)

    def has_master_cli(self) -> bool:
        """Whether the running master was started with a master CLI (``-S``): one an
        earlier Elastin started, or one whose path could not be bound, has none."""
        pid = self.master_pid()
        if pid is None:
            return False
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"-S" in args

    async def each_worker(self, command: str, timeout: float | None = None) -> list[str]:
        """``command``'s answer from every live worker: the current one and the old ones a
        reload left finishing the requests they carry (through the master CLI; a worker
        that exits meanwhile is left out). From the current worker alone (the runtime
        socket) when the master has no CLI. ``OSError`` or ``HaproxyError`` when the master
        CLI does not answer: while the master reloads it closes its CLI's connections, and
        the current worker's answer alone would leave out what the old ones carry.
        ``timeout``: seconds for the whole (``show proc`` and one connection per worker,
        one after another); ``TimeoutError`` (an ``OSError``) past it. Without it each
        connection still has the client's own bound."""
        async with asyncio.timeout(timeout):
            if not self.has_master_cli():
                return [await self.command(command)]
            answers = []
            for pid in await self.master.workers():
                with contextlib.suppress(WorkerGone):
                    answers.append(await self.master.command(pid, command))
        if not answers:
            raise HaproxyError(f"the master CLI ({self.master_socket}) lists no live worker")
        return answers

    async def unreachable(self, listeners: Sequence[Listener], timeout: float) -> list[str]:
        """Listeners that do not accept connections within ``timeout`` (a reload signalled
        while the previous one was still re-executing can be lost)."""
        deadline = self.clock.monotonic() + timeout
        missing = list(listeners)
        while missing and self.clock.monotonic() < deadline:
            still = []
            for lst in missing:
                try:
                    async with asyncio.timeout(0.2):
                        _, writer = await asyncio.open_connection(lst.address, lst.port)
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                except OSError:
                    still.append(lst)
            missing = still
            if missing:
                await self.clock.sleep(0.05)
        return [f"{lst.name} ({lst.address}:{lst.port})" for lst in missing]

    def send(self, command: str) -> str:
        """Blocking ``command``, for scripts and tests (never in the agent)."""
        return runtime(str(self.socket), command)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the master and its workers (they share its process group)."""
        pid = self.master_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = self.clock.monotonic() + timeout
        while self._is_master(pid) and self.clock.monotonic() < deadline:
            if self._child is not None:
                self._child.poll()
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if self._child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(1)
        self._pid = 0
