"""The pure parts of the access log collector: splitting a stream into lines, skipping what
was written already when a ring is replayed, and reading ``show info``'s pid."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from elastin.mesh.haproxy.accesslog import (
    LineBuffer,
    Replay,
    after,
    last_line,
    refusal,
    split_info,
)


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
