"""The pure parts of following a log (``agent/logfiles.py``): finding where a tail begins
from the end of a file, decoding inotify records, resuming after a rotation; and ``tail``
on real files, which only reads their end."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elastin.agent import logfiles
from elastin.agent.logfiles import (
    IN_IGNORED,
    IN_MODIFY,
    TailScan,
    parse_events,
    resume_at,
    tail,
)


def last_lines(data: bytes, n: int) -> bytes:
    """The reference: the last ``n`` lines (a last line without newline counts)."""
    lines = re.findall(rb"[^\n]*\n|[^\n]+\Z", data)
    return b"".join(lines[-n:]) if n else b""


def run_scan(data: bytes, lines: int, limit: int = 1 << 30, block: int = 7) -> int:
    scan = TailScan(len(data), lines, limit=limit, block=block)
    reads = 0
    while (want := scan.want()) is not None:
        off, n = want
        scan.feed(data[off : off + n])
        reads += n
    assert reads <= limit
    return scan.start


@pytest.mark.parametrize(
    ("data", "n", "expected"),
    [
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 2, b"b\nc"),
        (b"a\nb\nc\n", 5, b"a\nb\nc\n"),
        (b"a\nb\nc\n", 0, b""),
        (b"", 3, b""),
        (b"\n\n\n", 2, b"\n\n"),
        (b"only", 1, b"only"),
        (b"x\n", 1, b"x\n"),
    ],
)
def test_tail_scan_examples(data: bytes, n: int, expected: bytes) -> None:
    for block in (1, 2, 3, 64):
        assert data[run_scan(data, n, block=block) :] == expected


@given(
    data=st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\n")),
    n=st.integers(0, 40),
    block=st.integers(1, 50),
)
def test_tail_scan_matches_splitting_the_whole_file(data: bytes, n: int, block: int) -> None:
    assert data[run_scan(data, n, block=block) :] == last_lines(data, n)


def test_tail_scan_reads_no_more_than_its_limit_and_starts_on_a_whole_line() -> None:
    data = b"".join(f"line {i}\n".encode() for i in range(10_000))
    start = run_scan(data, 5_000, limit=1000, block=64)
    got = data[start:]
    assert len(got) <= 1000
    assert got.startswith(b"line ") and got.endswith(b"line 9999\n")
    assert got == last_lines(data, got.count(b"\n"))


def test_tail_scan_refuses_a_block_it_did_not_ask_for() -> None:
    scan = TailScan(10, 1, block=4)
    with pytest.raises(ValueError):
        scan.feed(b"abc")
    with pytest.raises(RuntimeError):
        _ = scan.start


def test_parse_events_decodes_records_and_strips_padding() -> None:
    name = b"stdout.log".ljust(16, b"\0")
    buf = struct.pack("iIII", 1, IN_MODIFY, 0, len(name)) + name
    buf += struct.pack("iIII", 1, IN_IGNORED, 0, 0)
    events = parse_events(buf)
    assert [(e.wd, e.mask, e.name) for e in events] == [
        (1, IN_MODIFY, "stdout.log"),
        (1, IN_IGNORED, ""),
    ]


def test_resume_at_starts_over_when_the_file_shrank() -> None:
    assert resume_at(100, 150) == 100
    assert resume_at(100, 100) == 100
    assert resume_at(100, 10) == 0  # copy-truncate, then 10 bytes written


async def test_tail_reads_only_the_end_of_a_large_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stdout.log"
    with open(path, "wb") as f:
        f.write(b"".join(f"line {i:07d}\n".encode() for i in range(1_000_000)))  # 13 MB
    read: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, off: int) -> bytes:
        read.append(n)
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "pread", counting_pread)
    got = await tail(path, 3)
    assert got == b"line 0999997\nline 0999998\nline 0999999\n"
    assert sum(read) <= 2 * logfiles.BLOCK


async def test_tail_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert await tail(tmp_path / "nothing.log", 10) == b""
