"""Following a log file with inotify (``agent/logfiles.py``) on real files: appended bytes
arrive without polling, a copy-truncate rotation starts over from the top, a file that does
not exist yet is waited for, and ending or cancelling a follow releases its descriptors."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from elastin.agent.drivers.task import rotate
from elastin.agent.logfiles import Watch, read_log

pytestmark = pytest.mark.integration


async def next_chunk(it: AsyncIterator[bytes], timeout: float = 5.0) -> bytes:
    return await asyncio.wait_for(anext(it), timeout)


async def read_until(it: AsyncIterator[bytes], want: bytes, timeout: float = 5.0) -> bytes:
    got = b""
    async with asyncio.timeout(timeout):
        while want not in got:
            got += await anext(it)
    return got


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_follow_yields_the_tail_then_what_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "stdout.log"
    path.write_bytes(b"one\ntwo\nthree\n")
    it = read_log(path, 2, watch=Watch(path))
    try:
        assert await next_chunk(it) == b"two\nthree\n"
        with open(path, "ab") as w:  # the task driver's way: append mode
            w.write(b"four\n")
            w.flush()
            assert await next_chunk(it) == b"four\n"
            w.write(b"five\nsix\n")
            w.flush()
            assert await read_until(it, b"six\n") == b"five\nsix\n"
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_follow_starts_over_after_a_copy_truncate_rotation(tmp_path: Path) -> None:
    path = tmp_path / "stdout.log"
    with open(path, "ab") as w:
        w.write(b"old line 1\nold line 2\n")
        w.flush()
        it = read_log(path, 10, watch=Watch(path))
        try:
            assert await next_chunk(it) == b"old line 1\nold line 2\n"
            assert rotate(path, max_bytes=1, keep=2)
            assert (tmp_path / "stdout.log.1").read_bytes() == b"old line 1\nold line 2\n"
            w.write(b"new\n")  # appended at the new end (0), before the follower looks
            w.flush()
            assert await read_until(it, b"new\n") == b"new\n"
            w.write(b"newer\n")
            w.flush()
            assert await read_until(it, b"newer\n") == b"newer\n"
        finally:
            await it.aclose()  # type: ignore[attr-defined]


async def test_follow_waits_for_a_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.log"
    it = read_log(path, 100, watch=Watch(path))
    try:
        pending = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.05)
        assert not pending.done()  # nothing yet: waiting, not spinning
        (tmp_path / "other.log").write_bytes(b"not ours\n")
        path.write_bytes(b'{"status":200}\n')
        assert await asyncio.wait_for(pending, 5) == b'{"status":200}\n'
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_a_replaced_file_is_read_from_its_top(tmp_path: Path) -> None:
    path = tmp_path / "stdout.log"
    path.write_bytes(b"first\n")
    it = read_log(path, 10, watch=Watch(path))
    try:
        assert await next_chunk(it) == b"first\n"
        fresh = tmp_path / "fresh"
        fresh.write_bytes(b"second file\n")
        fresh.replace(path)  # rename rotation
        assert await read_until(it, b"second file\n") == b"second file\n"
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_the_follow_ends_when_its_directory_is_removed(tmp_path: Path) -> None:
    logs = tmp_path / "allocs" / "ab12cd34" / "logs"
    logs.mkdir(parents=True)
    path = logs / "stdout.log"
    path.write_bytes(b"bye\n")
    before = open_fds()
    chunks = []
    it = read_log(path, 10, watch=Watch(path))
    assert await next_chunk(it) == b"bye\n"
    shutil.rmtree(tmp_path / "allocs")
    async with asyncio.timeout(5):
        async for chunk in it:
            chunks.append(chunk)
    assert chunks == []
    assert open_fds() == before


async def test_ending_a_watch_ends_the_follow_and_cancelling_releases_everything(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stdout.log"
    path.write_bytes(b"x\n")
    before = open_fds()
    closed: list[bool] = []
    watch = Watch(path)
    it = read_log(path, 1, watch=watch, on_close=lambda: closed.append(True))
    assert await next_chunk(it) == b"x\n"
    watch.end()
    with pytest.raises(StopAsyncIteration):
        await next_chunk(it)
    assert closed == [True] and open_fds() == before

    it = read_log(path, 1, watch=Watch(path))
    assert await next_chunk(it) == b"x\n"
    waiting = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert open_fds() == before


async def test_a_follow_is_bounded_in_time(tmp_path: Path) -> None:
    path = tmp_path / "stdout.log"
    path.write_bytes(b"x\n")
    it = read_log(path, 1, watch=Watch(path), max_seconds=0.1)
    assert await next_chunk(it) == b"x\n"
    with pytest.raises(StopAsyncIteration):
        await next_chunk(it, timeout=5)


async def test_watching_a_missing_directory_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Watch(tmp_path / "no" / "stdout.log")
