"""The pure parts of timestamped logs and exec requests: ``StampFilter`` (what a reader asked
for of a log whose lines the task driver's timestamper stamped), ``parse_since`` and
``parse_exec`` (the agent API's parameters)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elastin.agent.api import Refused, parse_exec, parse_since
from elastin.agent.logfiles import StampFilter, stamp_time, unstamp

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
LOG = (
    b"2024-05-01T11:59:59.500000Z before\n"
    b"2024-05-01T12:00:00.000000Z at\n"
    b"2024-05-01T12:00:01.250000Z after\n"
)


def run(f: StampFilter, data: bytes, cuts: list[int]) -> bytes:
    out, start = b"", 0
    for cut in [*sorted(cuts), len(data)]:
        out += f.feed(data[start:cut])
        start = cut
    return out + f.end()


def test_stamps_are_cut_off_unless_asked_for() -> None:
    assert run(StampFilter(), LOG, []) == b"before\nat\nafter\n"
    assert run(StampFilter(timestamps=True), LOG, []) == LOG
    assert stamp_time(LOG) == T0 - 0.5 and stamp_time(b"no stamp\n") is None


def test_since_leaves_out_the_lines_before_it() -> None:
    assert run(StampFilter(since=T0), LOG, []) == b"at\nafter\n"
    assert run(StampFilter(True, since=T0 + 1), LOG, []) == LOG.splitlines(True)[2]
    assert run(StampFilter(since=T0 + 60), LOG, []) == b""


@given(st.lists(st.integers(0, len(LOG)), max_size=8), st.booleans(), st.sampled_from([None, T0]))
def test_any_cut_of_the_stream_gives_the_same_lines(
    cuts: list[int], stamps: bool, since: float | None
) -> None:
    assert run(StampFilter(stamps, since), LOG, cuts) == run(StampFilter(stamps, since), LOG, [])


def test_a_partial_line_waits_for_its_end_and_unstamped_lines_pass_once_past_since() -> None:
    f = StampFilter(since=T0)
    assert f.feed(b"2024-05-01T12:00:00.000000Z par") == b""
    assert f.feed(b"tial\nold style line\n") == b"partial\nold style line\n"
    g = StampFilter(since=T0)  # unstamped lines before any stamp: their time is unknown
    assert run(g, b"old style line\n" + LOG, []) == b"at\nafter\n"
    assert unstamp(b"x 2024-05-01T12:00:00.000000Z y\n") == b"x 2024-05-01T12:00:00.000000Z y\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10m", 1000.0 - 600),
        ("90s", 1000.0 - 90),
        ("1h30m", 1000.0 - 5400),
        ("1.5s", 1000.0 - 1.5),
        ("250ms", 1000.0 - 0.25),
        ("2024-05-01T12:00:00Z", T0),
        ("2024-05-01T14:00:00+02:00", T0),
        ("", None),
    ],
)
def test_since_is_a_time_or_a_duration(value: str, expected: float | None) -> None:
    assert parse_since({"since": value}, now=1000.0) == expected


@pytest.mark.parametrize("value", ["yesterday", "10", "2024-05-01T12:00:00", "-5m", "5 m"])
def test_a_bad_since_is_refused_with_what_to_write(value: str) -> None:
    with pytest.raises(Refused) as e:
        parse_since({"since": value}, now=0)
    assert e.value.status == 422 and "10m" in e.value.hint


def test_an_exec_request_is_an_argv_and_a_bounded_timeout() -> None:
    req = parse_exec(json.dumps({"command": ["ls", "-l"], "timeout": 5}).encode())
    assert req.command == ("ls", "-l") and req.timeout == 5.0
    assert parse_exec(b'{"command": ["true"]}').timeout == 30.0
    for bad in (
        b"not json",
        b'{"command": "ls -l"}',  # a shell string: refused
        b'{"command": []}',
        b'{"command": [""]}',
        b'{"command": ["ls", 3]}',
        b'{"command": ["a\\u0000b"]}',
        b'{"command": ["ls"], "timeout": 0}',
        b'{"command": ["ls"], "timeout": 3601}',
        b'{"command": ["ls"], "timeout": true}',
    ):
        with pytest.raises(Refused) as e:
            parse_exec(bad)
        assert e.value.status == 422, bad
