"""Prometheus' text format as the agent reads an application gauge (pure): comments, HELP and
TYPE, labels (escapes, braces and commas in values, a trailing comma), NaN and infinities,
timestamps, exemplars, several label sets summed, exact names, and what makes a gauge
unreadable."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from elastin.agent.promtext import CHECK_EVERY, ParseError, Stopped, parse, parse_value, read

PAGE = r"""# HELP queue_depth Jobs waiting, per queue.
# TYPE queue_depth gauge
queue_depth{queue="emails"} 3
queue_depth{queue="odd \"one\", {with} braces\\",region="eu",} 4.5 1700000000000
  queue_depth{queue="x\ny"}	0.5
queue_depth_total 1000
queue_depth_bucket{le="+Inf"} 7
# a comment that looks like queue_depth 99
workers 2.5e1 # {trace_id="abc"} 1.0
idle NaN
busy +Inf
cold -Inf
empty_labels{} 7
# EOF
"""


def test_a_name_with_several_label_sets_reads_as_their_sum() -> None:
    got = read(PAGE, ["queue_depth"])
    assert got.values == {"queue_depth": 8.0}  # 3 + 4.5 + 0.5; not _total, _bucket, a comment
    assert got.problems == {}


def test_every_sample_is_parsed_with_its_value_forms() -> None:
    sums = parse(PAGE)
    assert sums["queue_depth_total"] == 1000.0
    assert sums["workers"] == 25.0  # an exemplar after the value is ignored
    assert math.isnan(sums["idle"])
    assert sums["busy"] == math.inf and sums["cold"] == -math.inf
    assert sums["empty_labels"] == 7.0


def test_names_match_exactly() -> None:
    got = read("queue_depth_total 5\nqueue 2\n", ["queue_depth"])
    assert got.values == {}
    assert got.problems == {"queue_depth": "no sample of queue_depth in the page"}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("g NaN\n", "g is nan (not a finite number)"),
        ('g{a="1"} 1\ng{a="2"} +Inf\n', "g is inf (not a finite number)"),
        ("g 1e308\ng 1e308\n", "g is inf"),  # a sum that overflows
        ("g 1_000\n", "line 1: the value of g: '1_000' is not a number"),
        ("g{a=1} 2\n", "line 1:"),  # an unquoted label value
        ('g{a="1" 2\n', "line 1:"),  # an unclosed brace
        ("\ng\n", "line 2:"),  # no value
        ("g 1 12.5\n", "line 1:"),  # a timestamp is an integer
        ("g 1 2 3\n", "line 1:"),
    ],
)
def test_an_unreadable_gauge_says_why(text: str, says: str) -> None:
    got = read(text, ["g"])
    assert got.values == {}
    assert says in got.problems["g"], got.problems


def test_a_malformed_line_spoils_only_its_own_metric() -> None:
    text = "good 3\nbad{x= 1\nother metric line with junk {\n"
    got = read(text, ["good", "bad"])
    assert got.values == {"good": 3.0}
    assert "line 2" in got.problems["bad"]
    with pytest.raises(ParseError, match="line 2"):
        parse(text)  # read all: the first malformed line is an error


def test_windows_line_ends_and_a_missing_final_newline_are_read() -> None:
    assert read("# TYPE g gauge\r\ng 4\r\nh 1", ["g", "h"]).values == {"g": 4.0, "h": 1.0}


@pytest.mark.parametrize("text", ["1", "-2.5", "1e3", ".5", "+Inf", "-Inf", "NaN", "Inf"])
def test_value_forms(text: str) -> None:
    v = parse_value(text)
    assert math.isnan(v) if text == "NaN" else v == float(text)


@pytest.mark.parametrize("text", ["0x10", "1_0", "one", "", "--1", "infinit"])
def test_not_values(text: str) -> None:
    with pytest.raises(ValueError, match="is not a number"):
        parse_value(text)


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ('g{a="b"} 1', 1.0),
        ('g{ a = "b" , c="d", } 2 123', 2.0),
        ("g{} 3", 3.0),
        ('g {a="b"}\t4', 4.0),  # blanks before the braces
        ('g{a="b"}5', 5.0),  # none after them
        ('g{a="x\\"}"} 6 # {t="1"} 1', 6.0),  # an exemplar after the value
        ('g 7 -12 # {t="1"} 1.5 99', 7.0),  # a timestamp and an exemplar
        ('g{a="b",c="}, {"}  8  ', 8.0),
    ],
)
def test_label_forms_are_read(line: str, value: float) -> None:
    assert read(line + "\n", ["g"]).values == {"g": value}


@pytest.mark.parametrize(
    "line",
    ['g{a="b" c="d"} 1', "g{,} 1", 'g{a="b",,} 1', 'g{a="b"', 'g{a="b"} ', "g-1 2", 'g{1="b"} 1'],
)
def test_malformed_label_forms_are_refused(line: str) -> None:
    assert "line 1:" in read(line, ["g"]).problems.get("g", ""), line


# A wanted metric's line built to make a backtracking parser take hours (review of issue #13:
# 16,000 blanks inside the braces took 0.63 s, a MiB of them years); and a MiB of ordinary
# lines. Run in a child process with a generous bound: hours fail, a linear parser takes well
# under a second.
HOSTILE = r"""
import sys, time
from elastin.agent.promtext import read
N = (1 << 20) - 200
cases = {
    "spaces in braces": 'queue_depth{a="b"' + " " * N + "x",
    "spaces in braces, 64 lines": ('queue_depth{a="b"' + " " * 4000 + "x\n") * 256,
    "spaces after a label": 'queue_depth{a="b" ' + " \t" * (N // 2) + ",}",
    "spaces after the value": "queue_depth 1" + " " * N + "x",
    "spaces before the timestamp": "queue_depth 1 " + " \t" * (N // 2) + "x",
    "many labels": "queue_depth{" + ",".join(['a="b"'] * (N // 6)) + " x",
    "many labels, blanks": "queue_depth{" + " , ".join(['a = "b"'] * (N // 10)) + " x",
    "backslashes": 'queue_depth{a="' + "\\\\" * (N // 2),
    "a long number": "queue_depth 1" + "1" * N + "x",
    "a long number, a dot": "queue_depth 1." + "1" * N + "e",
    "many lines": "queue_depth 1\n" * (N // 14),
    "many labelled lines": 'queue_depth{q="a"} 1\n' * (N // 22),
}
for name, text in cases.items():
    got = read(text[: 1 << 20], ["queue_depth"])
    print(name, got.values, list(got.problems))
"""


def test_hostile_pages_are_read_in_linear_time() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HOSTILE], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    said = dict(line.split(" {", 1) for line in done.stdout.splitlines())
    assert len(said) == 12
    for name in ("many lines", "many labelled lines"):
        assert said[name].startswith("'queue_depth': "), said[name]  # read, summed
    for name, what in said.items():
        if not name.startswith("many lines") and name != "many labelled lines":
            assert what == "} ['queue_depth']", (name, what)  # malformed: a problem


class StopAfter:
    """A reader's ``stop`` that says stop from its ``n``th question on (no clock: the test
    counts the questions)."""

    def __init__(self, n: int | None) -> None:
        self.n, self.asked = n, 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.n is not None and self.asked >= self.n


def test_a_read_asks_its_stop_every_few_thousand_lines_and_stops_when_told() -> None:
    """A MiB of wanted lines is most of a second of Python: the gauge reader stops a read at
    its timeout (``agent/gauges.py``) instead of letting it run to the end."""
    text = "# HELP q lines\n" + "q 1\n" * (10 * CHECK_EVERY)
    stop = StopAfter(3)
    with pytest.raises(Stopped, match=f"stopped at line {3 * CHECK_EVERY}$"):
        read(text, ["q"], stop=stop)
    assert stop.asked == 3  # and not one line further
    stop = StopAfter(2)
    with pytest.raises(Stopped):
        parse(text, stop=stop)
    assert stop.asked == 2
    never = StopAfter(None)  # asked, never says stop: the whole page is read
    assert read(text, ["q"], stop=never).values == {"q": 10 * CHECK_EVERY}
    assert never.asked == (10 * CHECK_EVERY + 2) // CHECK_EVERY  # every CHECK_EVERY lines
    assert read(text, ["q"]).values == {"q": 10 * CHECK_EVERY}  # no stop: never asked


def test_one_long_line_is_stopped_too() -> None:
    """A single line of many labels (a quarter of a second for a MiB) is stopped between
    its labels."""
    text = "q{" + 'a="b",' * (5 * CHECK_EVERY) + "} 1\n"
    stop = StopAfter(2)
    with pytest.raises(Stopped, match=f"stopped in line 1, at its label {2 * CHECK_EVERY}$"):
        read(text, ["q"], stop=stop)
    assert stop.asked == 2
    assert read(text, ["q"], stop=StopAfter(None)).values == {"q": 1.0}
