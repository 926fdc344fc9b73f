"""Collect the mesh's access log: HAProxy writes each logged request's JSON line (every
abnormal one and a sample of the others by default: ``render``) into an in-memory
ring (``log ring@elastin_log``, rendered by ``render``); ``AccessLogCollector`` follows that
ring over the runtime API (``show events elastin_log -w``) and appends the lines to the
node's log file, which ``elastin logs --mesh`` reads.

Why a ring and not HAProxy's stdout into a file: a write to a file is one blocking
``writev(2)`` per request inside HAProxy's event loop (HAProxy's manual calls it a debugging
set-up that "will significantly slow HAProxy down"); a slow or full disk would stall every
request on the node. Writing into the ring is a copy in memory; the collector reads what
has piled up in one go, so under load one read carries hundreds of lines. HAProxy never
waits for the collector: when nobody reads, the oldest lines are overwritten.

Where lines could be lost or doubled, and what is done about it:

* a reload starts a new worker with an empty ring: the collector asks every second (and at
  once when told with ``wake()``) which worker answers the socket (``show info``'s Pid) and
  follows each new one, while the old worker's follower goes on until the old worker has
  logged its last request and exits (or its idle CLI session times out);
* a follower reconnecting to a worker it followed before (the CLI's idle timeout) is sent
  the whole ring again: the lines up to the last one it wrote are skipped (``after``). The
  replay is over when the anchor comes, when the stream pauses for ``REPLAY_SECONDS`` (HAProxy
  sends a ring's old content back to back) or when more than a ring's worth came — not at a
  fixed time after connecting: a collector starved of cpu would otherwise take a replay that
  is still arriving for new lines and write it twice;
* a restarted agent starts from the last line of the ring in the file (HAProxy's own
  messages, ``[NOTICE]``/``[WARNING]``/``[ALERT]`` lines, share the file and are never in the
  ring), the same way; a worker that started after the collector, or after that last line
  was logged (its request's ``time`` plus its ``time_ms``: HAProxy logs a request when it
  ends; HAProxy reloaded or restarted while the agent was away), has nothing in the file,
  so all of its ring is new at once (no waiting for a replay to end, which a busy proxy's
  stream never gives). Not the file's modification time:
  HAProxy's master writes its own lines there after it forks a worker ("New worker",
  "Loading success"). Process start times come in clock ticks since boot: a worker is taken
  for later only when it surely is, else its replay is waited for as before;
* the agent away for longer than the ring holds (``RING_BYTES``, about 12,000 lines): the
  oldest of those lines are gone.

The splitting and skipping are pure (``LineBuffer``, ``Replay``); ``AccessLogCollector``
is the I/O around them: it talks to HAProxy through the same asynchronous ``RuntimeClient``
as the mesh manager, and takes its time from an injected ``Clock``. The agent's mesh
manager runs one; ``python -m elastin.mesh.haproxy.accesslog SOCKET LOG`` runs one on its
own until SIGTERM (the benchmarks and the real-HAProxy tests use it to drive a proxy as the
agent does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from elastin.clock import SYSTEM, Clock
from elastin.mesh.haproxy.render import RING_BYTES, RING_NAME
from elastin.mesh.haproxy.runtime_client import RuntimeClient, RuntimeSession

log = logging.getLogger("elastin.mesh.accesslog")

PROBE_SECONDS = 1.0  # how often the collector asks which worker serves the socket
READ_BYTES = 1 << 18
REPLAY_SECONDS = 0.5  # a pause this long in a replay: the ring's old content has all come
# after a short read, wait for lines to pile up rather than wake for a few: up to half a second
# (50 ms cost ~2 µs of cpu per request at 5,000 requests/s, bench/proxy.py; 0.5 s about half
# of it), but never longer than it takes the ring to fill an eighth at the rate lines came at
# (``batch_wait``): a fast stream is read often, and nothing is overwritten. A line reaches the
# file (and `elastin logs --mesh -f`) at most half a second late (Envoy flushes every 10 s).
BATCH_SECONDS = 0.5
BATCH_LEAST = 0.005


def batch_wait(rate: float) -> float:
    """How long to let lines pile up after a short read, at ``rate`` bytes/s."""
    if rate <= 0:
        return BATCH_SECONDS
    return min(BATCH_SECONDS, max(BATCH_LEAST, RING_BYTES / 8 / rate))


class LineBuffer:
    """Bytes in, complete lines out (each with its newline); keeps a partial last line."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return split_lines(data[:cut])


def split_lines(data: bytes) -> list[bytes]:
    """``data`` cut after each ``\\n`` (only there: a line may hold a ``\\r``); a last
    piece without a newline is kept as it is."""
    parts = [x + b"\n" for x in data.split(b"\n")]
    parts[-1] = parts[-1][:-1]
    return parts if parts[-1] else parts[:-1]


def after(lines: list[bytes], anchor: bytes | None) -> list[bytes]:
    """The lines after the last occurrence of ``anchor`` (the last line already written);
    all of them when ``anchor`` is not among them (a new worker, or a ring that wrapped)."""
    if anchor is None:
        return lines
    for i in range(len(lines) - 1, -1, -1):
        if lines[i] == anchor:
            return lines[i + 1 :]
    return lines


class Replay:
    """What of a followed ring is new. Its old content comes first: that is held back until
    ``anchor`` (the last line written from it) is found in it — what follows is new — or
    cannot be (``over``: the replay is done, or more than a ring's worth came), and then all
    of it is new. Without an anchor everything is new."""

    def __init__(self, anchor: bytes | None) -> None:
        self.anchor = anchor
        self._held: list[bytes] | None = [] if anchor is not None else None

    @property
    def holding(self) -> bool:
        return self._held is not None

    def feed(self, lines: list[bytes], over: bool) -> list[bytes]:
        if self._held is None:
            return lines
        self._held += lines
        rest = after(self._held, self.anchor)
        if len(rest) < len(self._held) or over:
            self._held = None
            return rest
        return []


def refusal(line: bytes) -> bool:
    """Whether the CLI's first line is a refusal ("No such event sink", "Unknown command")
    rather than a line of the ring (a JSON line, or a notice such as "Server ... is DOWN")."""
    return line.lower().startswith((b"no such", b"unknown"))


def split_info(data: bytes) -> tuple[int | None, bytes]:
    """``show info``'s answer (up to its blank line) -> (the worker's pid, what follows);
    (None, data) while the answer is incomplete."""
    end = data.find(b"\n\n")
    if end < 0:
        return None, data
    for line in data[:end].splitlines():
        key, _, value = line.partition(b":")
        if key == b"Pid" and value.strip().isdigit():
            return int(value), data[end + 2 :]
    return 0, data[end + 2 :]  # no pid: not an answer we understand


def haproxy_message(line: bytes) -> bool:
    """Whether a line of the log file is HAProxy's own message on its stdout/stderr
    (``[NOTICE]   (12) : Loading success.``), which is never a line of the ring."""
    return line.startswith(b"[")


def last_line(path: Path, window: int = 64 << 10) -> bytes | None:
    """The file's last complete line from the ring (HAProxy's own messages skipped), or
    None (no file, or none)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - window))
            tail = f.read()
    except OSError:
        return None
    complete = [x for x in split_lines(tail) if x.endswith(b"\n") and not haproxy_message(x)]
    return complete[-1] if complete else None


# the ``time`` every access log line starts with (``render``: ``%tr`` for HTTP, ``%t`` for
# TCP): when the request (the connection) came, in HAProxy's local time, to the millisecond
LINE_TIME = re.compile(
    rb'^\{"time":"(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2})\.(\d{3})"'
)
LINE_LASTED = re.compile(rb'"time_ms":(\d{1,10})[,}]')  # %Ta (HTTP) or %Tt (TCP)
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def line_time(line: bytes | None) -> float | None:
    """When an access log line was logged, in seconds since the epoch: when its request
    came (``time``) plus how long it lasted (``time_ms``: HAProxy logs a request when it
    ends; a slow request that came before a worker started may end, and be written, after
    that worker's lines); None for a line without a time (a notice of the ring, another
    format). A local time that a change of daylight saving time repeats is taken as the
    later one: a later time lets fewer workers count as all new, never more."""
    m = LINE_TIME.match(line or b"")
    if m is None or m.group(2).decode() not in MONTHS:
        return None
    lasted = LINE_LASTED.search(line or b"")
    took = int(lasted.group(1)) / 1000 if lasted else 0.0
    day, month, year, hour, minute, second, ms = (x.decode() for x in m.groups())
    try:
        when = datetime(
            int(year),
            MONTHS.index(month) + 1,
            int(day),
            int(hour),
            int(minute),
            int(second),
            int(ms) * 1000,
            fold=1,
        )
        return when.timestamp() + took
    except (ValueError, OverflowError, OSError):
        return None


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (None when unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_start(pid: int, now: float) -> float | None:
    """When ``pid`` started, in seconds since the epoch (``now``: the wall clock's time),
    never later than it did: the kernel counts it in whole clock ticks since boot
    (``CLOCK_BOOTTIME``); None when unknown."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    boot = now - time.clock_gettime(time.CLOCK_BOOTTIME)
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def all_new(worker: float | None, collector: float | None, anchor: float | None) -> bool:
    """Whether the ring of a worker that started at ``worker`` can hold nothing of the file:
    it started after the collector (``collector``), or after the file's last line of a ring
    was logged (``anchor``, ``line_time``; a worker logs only requests it accepted, when they
    end). Times in
    seconds since the epoch; an unknown one decides nothing."""
    if worker is None:
        return False
    return any(t is not None and worker > t for t in (collector, anchor))


class AccessLogCollector:
    """Follows the access log ring of the HAProxy behind ``runtime`` (every worker in
    turn, across reloads and restarts) and appends its lines to ``log_path``."""

    def __init__(
        self,
        runtime: RuntimeClient,
        log_path: Path,
        probe: float = PROBE_SECONDS,
        clock: Clock = SYSTEM,
        started_at: Callable[[int], float | None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.log_path = log_path
        self.probe = probe
        self.clock = clock
        # when a process started (epoch seconds, never later than it did; None: unknown)
        self.started_at = started_at or (lambda pid: process_start(pid, self.clock.time()))
        # worker pid -> the last line written from it (or, before any, where to start)
        self._anchors: dict[int, bytes | None] = {}
        self._start_anchor = last_line(log_path)  # after a restart: where the file ends
        # workers started after this process, or after that line's request, are all new
        self._started = self.started_at(os.getpid())
        self._anchor_time = line_time(self._start_anchor)
        self._following: set[int] = set()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Look for a new worker now (after a reload); callable from any thread."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """Follow every worker that serves the socket, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            while True:
                attached = await self._attach()
                if attached is not None:
                    pid, sess, rest = attached
                    self._following.add(pid)
                    tg.create_task(self._follow(pid, sess, rest))
                    continue  # a follower ended or a reload: maybe one more worker at once
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.probe):
                        await self._wake.wait()
                self._wake.clear()

    async def _attach(self) -> tuple[int, RuntimeSession, bytes] | None:
        """Connect and ask which worker answers; a session that follows its ring when that
        worker is not followed yet, else None."""
        try:
            sess = await self.runtime.session(
                f"show info;show events {RING_NAME} -w", limit=READ_BYTES
            )
        except OSError:  # TimeoutError too
            return None  # no proxy (yet), or not answering: ask again later
        try:
            async with asyncio.timeout(5):
                data, pid, rest = b"", None, b""
                while pid is None:
                    chunk = await sess.read(READ_BYTES)
                    if not chunk:
                        break
                    data += chunk
                    pid, rest = split_info(data)
            if pid and pid not in self._following:
                return pid, sess, rest
        except OSError:
            pass
        sess.close()
        return None

    async def _follow(self, pid: int, sess: RuntimeSession, first: bytes) -> None:
        started = self.clock.monotonic()
        buf = LineBuffer()
        replay = Replay(self._anchor(pid))
        received, checked, paused = 0, False, False
        rate, since = 0.0, self.clock.monotonic()  # bytes/s of lines, smoothed
        data = first
        try:
            while True:
                lines = buf.feed(data)
                received += len(data)
                now = self.clock.monotonic()
                if now > since:
                    rate = 0.7 * rate + 0.3 * len(data) / (now - since)
                since = now
                if lines and not checked:
                    checked = True
                    if refusal(lines[0]):
                        log.warning("haproxy has no access log ring: %s", lines[0].decode().strip())
                        break
                over = paused or received > RING_BYTES + READ_BYTES
                lines = replay.feed(lines, over)
                if lines:
                    self._write(lines)
                    self._anchors[pid] = lines[-1]
                wait = REPLAY_SECONDS if replay.holding else None
                if wait is None and len(data) < READ_BYTES // 4:
                    # little came: let lines pile up (in the socket, then in the ring)
                    # rather than wake for each one — a read then carries hundreds
                    await self.clock.sleep(batch_wait(rate))
                try:
                    async with asyncio.timeout(wait):
                        data = await sess.read(READ_BYTES)
                except TimeoutError:
                    data, paused = b"", True  # the replay is over: what is held is new
                    continue
                if not data:
                    break  # held lines (if any) come again with the next follower
        except OSError as e:
            log.debug("access log of worker %d: %s", pid, e)
        finally:
            sess.close()
            self._following.discard(pid)
            # maybe the newest worker needs a follower now; a follower that ended at once
            # (a worker exiting, a refusal) waits for the next probe instead
            if self._wake is not None and self.clock.monotonic() - started >= self.probe:
                self._wake.set()

    def _anchor(self, pid: int) -> bytes | None:
        """The last line written from worker ``pid``: what a replay of its ring is skipped
        up to. A worker not followed before: the file's last line when this collector
        started — unless the worker started after the collector, or after that line's
        request came (``all_new``: nothing of it can be in the file; waiting for that line
        would hold its lines back until its stream pauses, which a busy proxy's never
        does)."""
        if pid not in self._anchors:
            new = all_new(self.started_at(pid), self._started, self._anchor_time)
            self._anchors[pid] = None if new else self._start_anchor
        return self._anchors[pid]

    def _write(self, lines: Iterable[bytes]) -> None:
        data = b"".join(lines)
        with open(self.log_path, "ab") as f:
            f.write(data)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m elastin.mesh.haproxy.accesslog SOCKET LOG", file=sys.stderr)
        return 2
    collector = AccessLogCollector(RuntimeClient(args[0]), Path(args[1]))

    async def until_stopped() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(collector.run())
            await stop.wait()
            task.cancel()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(until_stopped())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
