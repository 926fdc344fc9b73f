"""The pure parts of the access log collector: splitting a stream into lines, skipping what
was written already when a ring is replayed, and reading ``show info``'s pid; and the
collector's follower on a scripted session: a replay that arrives slowly is still skipped
up to its anchor, and a worker started after the collector, or after the request of the
file's last line, is all new (start times given, not raced for)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elastin.mesh.haproxy import accesslog
from elastin.mesh.haproxy.accesslog import (
    AccessLogCollector,
    LineBuffer,
    Replay,
    after,
    all_new,
    last_line,
    line_time,
    process_start,
    refusal,
    split_info,
)
from elastin.mesh.haproxy.runtime_client import RuntimeClient
from elastin.testing import FakeClock


def test_lines_come_out_whole_whatever_the_chunks() -> None:
    buf = LineBuffer()
    assert buf.feed(b'{"a":1}\n{"b"') == [b'{"a":1}\n']
    assert buf.feed(b":2}") == []
    assert buf.feed(b"\n\n") == [b'{"b":2}\n', b"\n"]


@given(st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=20), st.data())
def test_any_cut_gives_the_same_lines(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(x + b"\n" for x in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    buf, out, start = LineBuffer(), [], 0
    for cut in [*cuts, len(stream)]:
        out += buf.feed(stream[start:cut])
        start = cut
    assert out == [x + b"\n" for x in lines]


def test_a_replayed_ring_is_skipped_up_to_the_last_line_written() -> None:
    ring = [b"1\n", b"2\n", b"3\n", b"4\n"]
    assert after(ring, b"2\n") == [b"3\n", b"4\n"]
    assert after(ring, b"4\n") == []
    assert after(ring, None) == ring  # a new worker: all of it is new
    assert after(ring, b"0\n") == ring  # the ring wrapped past it: all of it is new
    assert after([b"x\n", b"y\n", b"x\n", b"z\n"], b"x\n") == [b"z\n"]  # the latest one


def test_show_info_gives_the_worker_pid_and_what_follows() -> None:
    assert split_info(b"Name: HAProxy\nPid: 4242\nUptime") == (
        None,
        b"Name: HAProxy\nPid: 4242\nUptime",
    )
    assert split_info(b'Name: HAProxy\nPid: 4242\n\n{"a":1}\n') == (4242, b'{"a":1}\n')
    assert split_info(b"Unknown command\n\n") == (0, b"")


def test_last_line_of_the_file(tmp_path: Path) -> None:
    f = tmp_path / "haproxy.log"
    assert last_line(f) is None
    f.write_bytes(b"a\nb\npartial")
    assert last_line(f) == b"b\n"
    f.write_bytes(b"x" * 100_000 + b"\nend\n")
    assert last_line(f) == b"end\n"


def test_a_replay_is_held_until_the_anchor_comes_then_passes_through() -> None:
    replay = Replay(b"b\n")
    assert replay.feed([b"a\n"], over=False) == [] and replay.holding
    assert replay.feed([b"b\n", b"c\n"], over=False) == [b"c\n"]
    assert not replay.holding
    assert replay.feed([b"b\n"], over=False) == [b"b\n"]  # live lines are never skipped


def test_a_replay_without_its_anchor_is_all_new_once_it_is_over() -> None:
    replay = Replay(b"gone\n")
    assert replay.feed([b"x\n"], over=False) == []
    assert replay.feed([b"y\n"], over=True) == [b"x\n", b"y\n"]
    assert Replay(None).feed([b"z\n"], over=False) == [b"z\n"]  # a new worker


def test_refusals_are_told_from_ring_lines() -> None:
    assert refusal(b"No such event sink\n") and refusal(b"Unknown command: 'show'\n")
    assert not refusal(b'{"path":"/no such thing"}\n')
    assert not refusal(b"Server c_a/e_1 is DOWN, reason: Layer7 invalid response\n")


def test_the_anchor_after_a_restart_is_a_line_of_the_ring(tmp_path: Path) -> None:
    f = tmp_path / "haproxy.log"
    f.write_bytes(
        b'{"path":"/a"}\n'
        b"[NOTICE]   (6909) : Reloading HAProxy\n"
        b"[WARNING]  (6911) : Proxy c_shop.web.http stopped (cumulated conns: FE: 0, BE: 2).\n"
    )
    assert last_line(f) == b'{"path":"/a"}\n'  # HAProxy's own messages are never in a ring
    f.write_bytes(b"[NOTICE]   (6909) : Loading success.\n")
    assert last_line(f) is None


class ScriptedSession:
    """A runtime API session whose chunks arrive ``gap`` seconds apart, then end."""

    def __init__(self, chunks: list[bytes], gap: float) -> None:
        self.chunks = chunks
        self.gap = gap
        self.closed = False

    async def read(self, limit: int) -> bytes:
        if not self.chunks:
            return b""
        await asyncio.sleep(self.gap)
        return self.chunks.pop(0)

    def close(self) -> None:
        self.closed = True


def collector(tmp: Path) -> AccessLogCollector:
    return AccessLogCollector(
        RuntimeClient(tmp / "none.sock"), tmp / "haproxy.log", clock=FakeClock(autojump=True)
    )


async def test_a_slow_replay_is_still_skipped_up_to_its_anchor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accesslog, "REPLAY_SECONDS", 0.2)
    log = tmp_path / "haproxy.log"
    written = b"0\n1\n2\n2x\n3\n"
    log.write_bytes(written)
    c = collector(tmp_path)  # restarted: the file ends with 3
    pid = os.getppid()  # a process older than the collector: its ring may hold what is written
    # the replay of the ring comes in pieces, together longer than REPLAY_SECONDS (a
    # collector starved of cpu): still all skipped up to 3
    sess = ScriptedSession([b"1\n", b"2\n", b"2x\n", b"3\n", b"4\n", b"5\n"], gap=0.08)
    await asyncio.wait_for(c._follow(pid, sess, b"0\n"), 5)  # type: ignore[arg-type]
    assert log.read_bytes() == written + b"4\n5\n" and sess.closed


async def test_a_replay_without_its_anchor_is_new_once_it_pauses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accesslog, "REPLAY_SECONDS", 0.05)
    log = tmp_path / "haproxy.log"
    log.write_bytes(b"gone\n")
    c = collector(tmp_path)
    sess = ScriptedSession([b"b\n", b"c\n"], gap=0.1)  # a pause after the first line
    await asyncio.wait_for(c._follow(os.getppid(), sess, b"a\n"), 5)  # type: ignore[arg-type]
    assert log.read_bytes() == b"gone\na\nb\nc\n"


# a line's time as HAProxy writes it (%tr), and the same instant in seconds since the epoch
LINE_AT = "06/Feb/2026:12:14:14.655"
AT = datetime(2026, 2, 6, 12, 14, 14, 655000).timestamp()
WORKER, OLDER, UNKNOWN = 1001, 1002, 1003


def test_a_lines_time_is_when_its_request_ended() -> None:
    http = b'{"time":"%s","caller":"c","listener":"c.web","status":200}\n' % LINE_AT.encode()
    assert line_time(http) == AT
    tcp = b'{"time":"%s","caller":"c","bytes_in":3}\n' % LINE_AT.encode()
    assert line_time(tcp) == AT
    assert line_time(b"Server c_a/e_1 is DOWN, reason: Layer4 timeout\n") is None
    assert line_time(b'{"time":"06/Foo/2026:12:14:14.655"}\n') is None
    assert line_time(b'{"time":"31/Feb/2026:12:14:14.655"}\n') is None
    assert line_time(None) is None
    # logged when it ended: a 10 s request came before a worker started, its line after
    slow = b'{"time":"%s","caller":"c","time_ms":10000,"connect_ms":0}\n' % LINE_AT.encode()
    assert line_time(slow) == AT + 10.0
    assert line_time(b'{"time":"%s","time_ms":-1}\n' % LINE_AT.encode()) == AT  # aborted


def test_a_process_start_is_never_later_than_it_was() -> None:
    started = process_start(os.getpid(), time.time())
    assert started is not None and started <= time.time()
    assert process_start(2**22 + 7, time.time()) is None  # no such process


def test_the_rule_for_a_ring_that_is_all_new() -> None:
    assert all_new(101.0, 100.0, None)  # started after the collector
    assert all_new(101.0, None, 100.0)  # after the request of the file's last line
    assert not all_new(100.0, 100.0, 100.0)  # maybe not: its replay is waited for
    assert not all_new(99.0, 100.0, 100.0)
    assert not all_new(None, 100.0, 100.0)  # unknown: nothing decided


async def test_a_worker_started_after_the_collector_is_all_new(tmp_path: Path) -> None:
    log = tmp_path / "haproxy.log"
    log.write_bytes(b"x\n")
    times = {os.getpid(): 100.0, WORKER: 100.01, OLDER: 99.0}
    c = AccessLogCollector(
        RuntimeClient(tmp_path / "none.sock"),
        log,
        clock=FakeClock(autojump=True),
        started_at=times.get,
    )
    assert c._anchor(WORKER) is None  # nothing to wait for: no replay to skip
    assert c._anchor(OLDER) == b"x\n"  # older: maybe written already
    assert c._anchor(UNKNOWN) == b"x\n"  # gone, or no /proc: wait for the replay
    sess = ScriptedSession([b"y\n"], gap=0)
    await asyncio.wait_for(c._follow(WORKER, sess, b"x\n"), 5)  # type: ignore[arg-type]
    assert log.read_bytes() == b"x\nx\ny\n"  # its own "x" line is new


async def test_a_worker_started_after_the_file_was_written_is_all_new(tmp_path: Path) -> None:
    """HAProxy reloaded (or restarted), then the agent came back: the new worker's ring
    cannot hold the file's last line, so waiting for it held every line back until the
    stream paused (never, under load). Decided by that line's own time: the file was
    written later than the worker started (HAProxy's master writes "New worker ... forked"
    and "Loading success" after the fork), so its modification time said "maybe"."""
    log = tmp_path / "haproxy.log"
    last = b'{"time":"%s","path":"/a","status":200}\n' % LINE_AT.encode()
    log.write_bytes(
        last + b"[NOTICE]   (7) : New worker (1001) forked\n[NOTICE]   (7) : Loading success.\n"
    )
    os.utime(log, (AT + 10, AT + 10))  # the master's lines: after the worker started
    # the agent (re)started after the worker, as after a reboot
    times = {os.getpid(): AT + 20, WORKER: AT + 1, OLDER: AT - 1, UNKNOWN: AT}
    c = AccessLogCollector(
        RuntimeClient(tmp_path / "none.sock"),
        log,
        clock=FakeClock(autojump=True),
        started_at=times.get,
    )
    assert c._anchor(WORKER) is None
    assert c._anchor(OLDER) == last  # started before that request came: may hold it
    assert c._anchor(UNKNOWN) == last  # the same millisecond: maybe
    # its lines pass at once, though the stream never pauses (no replay to wait out)
    sess = ScriptedSession([b"b\n", b"c\n"], gap=0)
    await asyncio.wait_for(c._follow(WORKER, sess, b"a\n"), 5)  # type: ignore[arg-type]
    assert log.read_bytes().endswith(b"Loading success.\na\nb\nc\n")


def test_the_collector_waits_less_the_faster_lines_come() -> None:
    """A short read is followed by a wait for lines to pile up: half a second when they
    trickle, never so long that the ring (RING_BYTES) fills past an eighth at the rate they
    came (at saturation a long wait let HAProxy overwrite most of the lines)."""
    from elastin.mesh.haproxy.accesslog import BATCH_LEAST, BATCH_SECONDS, batch_wait
    from elastin.mesh.haproxy.render import RING_BYTES

    assert batch_wait(0.0) == BATCH_SECONDS
    assert batch_wait(1000.0) == BATCH_SECONDS  # a few lines a second
    fast = 40_000 * 330.0  # 40,000 lines/s of ~330 bytes
    assert batch_wait(fast) * fast <= RING_BYTES / 8
    assert batch_wait(1e12) == BATCH_LEAST
