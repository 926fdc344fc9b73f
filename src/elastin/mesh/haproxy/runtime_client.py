"""The asynchronous clients of HAProxy's runtime API: the ``stats socket`` (a unix socket,
the current worker's) and the master CLI (``-S``, the master's, which reaches every worker).

``RuntimeClient.command`` sends one command and returns the answer (HAProxy closes the
connection after it); ``RuntimeClient.session`` keeps a connection open for a command whose
answer goes on (``show events <ring> -w``: the access log collector). The agent's mesh
manager (apply, delete, stats) and the access log collector both go through it, on the event
loop; nothing waits in a thread for the socket.

``MasterClient`` talks to the master CLI: ``workers`` lists the live workers (the current one
and the old ones a reload left finishing what they carry, from ``show proc``), ``command``
sends a runtime command to one of them by pid (``@!<pid> <command>``). The drain counts the
requests in flight on every worker through it (``HaproxyProcess.each_worker``, which bounds
``show proc`` and every worker's command together by the time the drain has left): after a
reload the stats socket answers for the new worker only.

Exceptions::

    HaproxyError        HAProxy refused a command (its own one-line answer in the message);
                        ``WorkerGone`` when the master CLI has no worker with that pid (it
                        exited meanwhile)
    OSError             the socket is not there or does not answer (``TimeoutError`` after
                        ``timeout`` s is one)

How a refusal is told from a success is ``refused`` (HAProxy 2.6's answers, tested in
``tests/unit/mesh/test_runtime_answers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path


class HaproxyError(Exception):
    """HAProxy rejected a configuration or a runtime command."""


class WorkerGone(HaproxyError):
    """The master CLI knows no worker with the pid a command was sent to (it has exited)."""


# How HAProxy 2.6's runtime API says no: a one-line answer. Successes are empty, data, or a
# line of news ("New server registered.", "Server deleted.", "IP changed from ...").
_REFUSAL_STARTS = ("no such", "error", "unknown", "already exists", "only ", "require", "'")
_REFUSAL_WORDS = ("not found", "cannot", "expects", "invalid", "garbage", "must be")


def refused(answer: str) -> bool:
    """Whether a runtime API answer is a refusal (e.g. "Server still has connections
    attached to it, cannot remove it." or "Already exists a server with the same name")."""
    first = next((line for line in answer.splitlines() if line.strip()), "").strip().lower()
    return first.startswith(_REFUSAL_STARTS) or any(w in first for w in _REFUSAL_WORDS)


class RuntimeSession:
    """An open connection to the runtime API, reading what a long command sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, limit: int) -> bytes:
        """What has arrived, up to ``limit`` bytes (waits for some); b"" at the end."""
        return await self._reader.read(limit)

    def close(self) -> None:
        self._writer.close()


class RuntimeClient:
    def __init__(self, socket_path: Path | str, timeout: float = 5.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    async def command(self, command: str) -> str:
        """Send one command; return its answer. Raises ``HaproxyError`` on a refusal,
        ``OSError`` when the socket does not answer within ``timeout``."""
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            try:
                writer.write(command.encode() + b"\n")
                await writer.drain()
                data = await reader.read()  # HAProxy closes after one command
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        answer = data.decode(errors="replace")
        if refused(answer):
            raise HaproxyError(f"haproxy refused {command!r}: {answer.strip()}")
        return answer

    async def session(self, command: str, limit: int = 1 << 18) -> RuntimeSession:
        """Connect and send ``command`` (e.g. ``show info;show events <ring> -w``); the
        answer is read from the session as it comes. ``limit``: the most one read returns."""
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path), limit=limit)
            try:
                writer.write(command.encode() + b"\n")
                await writer.drain()
            except BaseException:
                writer.close()
                raise
        return RuntimeSession(reader, writer)


def parse_workers(show_proc: str) -> list[int]:
    """The pids of the live workers in the master CLI's ``show proc`` answer: the current
    ones first, then the old ones (a reload's leaving workers); programs are not workers."""
    pids: list[int] = []
    section = ""
    for line in show_proc.splitlines():
        if line.startswith("#"):
            section = line.strip("# ").lower()
            continue
        fields = line.split()
        live = section in ("workers", "old workers")
        if live and len(fields) > 1 and fields[0].isdigit() and fields[1] == "worker":
            pids.append(int(fields[0]))
    return pids


class MasterClient:
    """HAProxy's master CLI (``haproxy -W -S <socket>``). Each call is one connection: the
    line sent ends with ``quit`` and the writing side is closed, so the master closes the
    connection after its answer (it keeps it open otherwise, e.g. after "Can't find the
    target PID")."""

    def __init__(self, socket_path: Path | str, timeout: float = 5.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    async def _ask(self, line: str) -> str:
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            try:
                writer.write(line.encode() + b"\nquit\n")
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                data = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        return data.decode(errors="replace")

    async def workers(self) -> list[int]:
        """The live workers' pids, current first, then old ones (``parse_workers``).
        ``HaproxyError`` when the answer is not ``show proc``'s (no master line)."""
        answer = await self._ask("show proc")
        if " master " not in answer:
            raise HaproxyError(f"the master CLI answered 'show proc' with {answer.strip()!r}")
        return parse_workers(answer)

    async def command(self, pid: int, command: str) -> str:
        """``command``'s answer from the worker ``pid``: ``WorkerGone`` when there is no
        such worker, ``HaproxyError`` when the worker refuses the command."""
        if "\n" in command or ";" in command:
            raise ValueError(f"one runtime command at a time, not {command!r}")
        answer = await self._ask(f"@!{pid} {command}")
        if answer.startswith("Can't find the target PID"):
            raise WorkerGone(f"no HAProxy worker with pid {pid}: {answer.strip()}")
        if refused(answer):
            raise HaproxyError(f"haproxy worker {pid} refused {command!r}: {answer.strip()}")
        return answer
