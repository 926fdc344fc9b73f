"""Prometheus' text exposition format (0.0.4), read for an application metric's gauge (pure).

An autoscaled service may follow a gauge it serves itself (``autoscale: {metrics: [{metric:
queue_depth, target: 10, port: metrics, path: /metrics}]}``, docs/autoscaling.md). The agent
scrapes each ready replica's endpoint every metrics interval (``agent/gauges.py``) and reads
the gauges its spec names here; the values go into the replica's metrics report
(``agent/sampling.py``) and from there to the server's autoscaler.

What is read, as Prometheus' own text parser does:

- lines are separated by ``\\n`` (a ``\\r`` before it is dropped); blank lines and lines
  starting with ``#`` (``# HELP``, ``# TYPE``, ``# EOF``, any comment) are skipped;
- a sample is ``name[{label="value",...}] value [timestamp]``: the name must match exactly
  (``queue_depth`` is not ``queue_depth_total`` nor ``queue_depth_bucket``); label values may
  hold escaped quotes, backslashes and newlines, and ``}`` or ``,``; a trailing comma inside
  the braces is allowed; the value is a float, ``NaN``, ``+Inf`` or ``-Inf``; the timestamp
  (milliseconds) is checked and ignored; an OpenMetrics exemplar (`` # {...} value``) after
  them is ignored;
- a name with several samples (several label sets, or the same one repeated) reads as their
  **sum** (the service's total of, say, a queue depth per queue);
- only the lines of the names asked for are parsed: a malformed line of another metric is
  not this reader's business (Prometheus would refuse the whole scrape);
- a page is read in time linear in its length, whatever it holds: the page comes from the
  application, and a line built against a backtracking parser must not cost the agent more
  than reading it (a scanner moving forward, with patterns that cannot backtrack);
- a read can be stopped: linear is still most of a second for a MiB of wanted lines, so the
  caller may pass ``stop``, a callable asked every ``CHECK_EVERY`` lines (and every
  ``CHECK_EVERY`` labels of one line); when it answers true the read raises ``Stopped``.
  The module knows no clock: the caller decides (the gauge reader sets a flag at its
  timeout).

``read`` answers the values found and, per name it could not read, why: absent, a malformed
sample line (its line number), or a value that is not a finite number (``NaN``, ``±Inf``, or a
sum that overflowed) — a gauge the autoscaler cannot use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

# lines (or labels of one line) read between two questions to the caller's ``stop``: a few
# milliseconds of work at most
CHECK_EVERY = 2048

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# The pieces of a sample line after its name, each matched at a position by the scanner
# (``_rest``): none can backtrack (one quantifier each, or possessive ones), and the scanner
# only moves forward, so a line is read in time linear in its length whatever it holds. (One
# regular expression for the whole line had blanks that two of its parts could take: a wanted
# metric's line with a MiB of blanks in its braces took hours.)
_BLANKS_RE = re.compile(r"[ \t]*")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL_VALUE_RE = re.compile(r'"(?:[^"\\\n]++|\\.)*+"')
_TOKEN_RE = re.compile(r"[^ \t]*")
_TIMESTAMP_RE = re.compile(r"-?[0-9]+")
# Go's ParseFloat as Prometheus uses it, without hexadecimal and underscores; possessive, so
# that a long run of digits that is not a number fails at once (``[0-9]+\.?[0-9]*`` split it
# every possible way: a MiB of digits took hours)
_FLOAT_RE = re.compile(
    r"[+-]?+(?:(?:[0-9]++(?:\.[0-9]*+)?+|\.[0-9]++)(?:[eE][+-]?+[0-9]++)?+"
    r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?+|[nN][aA][nN])"
)


class ParseError(ValueError):
    """A sample line of a wanted metric is malformed (the message names its line)."""


class Stopped(Exception):
    """The caller's ``stop`` said stop: the page was not read to its end (the message says
    where the read stopped)."""


Stop = Callable[[], bool]  # asked now and then during a read: true to stop it


@dataclass(frozen=True)
class Gauges:
    """What ``read`` found: ``values`` by name (finite sums), ``problems``: name -> why it has
    no value."""

    values: dict[str, float] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


def parse_value(text: str) -> float:
    """A sample's value (``1``, ``-2.5e3``, ``NaN``, ``+Inf``); ``ValueError`` otherwise."""
    if not _FLOAT_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a number")
    return float(text)


def _sample(
    line: str, names: frozenset[str] | None, number: int, stop: Stop | None = None
) -> tuple[str, float] | None:
    """``(name, value)`` of a sample line whose name is wanted (``names``; None: any), None
    for another metric's line; ``ParseError`` when a wanted one is malformed, ``Stopped``
    when ``stop`` says so during a long one."""
    m = NAME_RE.match(line)
    if m is None:
        if names is None:
            raise ParseError(f"line {number}: no metric name at the start of {line[:80]!r}")
        return None
    name = m.group()
    if names is not None and name not in names:
        return None
    value = _rest(line, m.end(), stop, number)
    if value is None:
        raise ParseError(
            f"line {number}: {line[:120]!r} is not a sample (name{{labels}} value [timestamp])"
        )
    try:
        return name, parse_value(value)
    except ValueError as e:
        raise ParseError(f"line {number}: the value of {name}: {e}") from None


def _blanks(line: str, at: int) -> int:
    """Where the blanks (spaces, tabs) from ``at`` end."""
    m = _BLANKS_RE.match(line, at)
    return m.end() if m else at  # (always a match: blanks may be none)


def _labels(line: str, at: int, stop: Stop | None = None, number: int = 0) -> int | None:
    """Where ``{label="value", ...}`` starting at ``at`` (its ``{``) ends, just after its
    ``}``; None when it is malformed. Blanks may go around the names, ``=`` and ``,``, and a
    comma may end the list. ``stop`` is asked every ``CHECK_EVERY`` labels (``number``: the
    line's, for ``Stopped``'s message)."""
    at = _blanks(line, at + 1)
    labels = 0
    while True:
        labels += 1
        if stop is not None and labels % CHECK_EVERY == 0 and stop():
            raise Stopped(f"stopped in line {number}, at its label {labels}")
        if line.startswith("}", at):
            return at + 1
        name = _LABEL_NAME_RE.match(line, at)
        if name is None:
            return None
        at = _blanks(line, name.end())
        if not line.startswith("=", at):
            return None
        value = _LABEL_VALUE_RE.match(line, _blanks(line, at + 1))
        if value is None:
            return None
        at = _blanks(line, value.end())
        if line.startswith(",", at):
            at = _blanks(line, at + 1)
        elif not line.startswith("}", at):
            return None


def _rest(line: str, at: int, stop: Stop | None = None, number: int = 0) -> str | None:
    """The value (unchecked) of a sample line whose name ends at ``at``: ``[{labels}] value
    [timestamp] [# exemplar]``, None when the line is not of that form (``stop``, ``number``:
    as ``_labels``)."""
    start = at
    at = _blanks(line, at)
    if line.startswith("{", at):
        end = _labels(line, at, stop, number)
        if end is None:
            return None
        at = _blanks(line, end)
    elif at == start:
        return None  # the name runs into something else
    token = _TOKEN_RE.match(line, at)
    if token is None or token.end() == at:
        return None  # no value
    at = _blanks(line, token.end())
    if at < len(line) and not line.startswith("#", at):  # not the end, nor an exemplar
        timestamp = _TOKEN_RE.match(line, at)
        if timestamp is None or not _TIMESTAMP_RE.fullmatch(timestamp.group()):
            return None
        at = _blanks(line, timestamp.end())
        if at < len(line) and not line.startswith("#", at):
            return None
    return token.group()


def _candidates(
    text: str, wanted: frozenset[str] | None, stop: Stop | None = None
) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the sample lines that may be of ``wanted`` (None: every
    sample line); comments and blank lines are skipped. ``stop`` is asked every
    ``CHECK_EVERY`` lines, whatever they are (``Stopped`` when it says so)."""
    for number, raw in enumerate(text.split("\n"), 1):
        if stop is not None and number % CHECK_EVERY == 0 and stop():
            raise Stopped(f"stopped at line {number}")
        line = (raw[:-1] if raw.endswith("\r") else raw).lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        if wanted is not None and not any(line.startswith(n) for n in wanted):
            continue  # cheap: most lines of a large page are other metrics'
        yield number, line


def parse(
    text: str, names: Iterable[str] | None = None, stop: Stop | None = None
) -> dict[str, float]:
    """Every sample of ``text`` (or only those of ``names``) summed by name; the sums may be
    NaN or infinite. ``ParseError`` on the first malformed line read; ``Stopped`` when
    ``stop`` says so (asked every ``CHECK_EVERY`` lines)."""
    wanted = None if names is None else frozenset(names)
    sums: dict[str, float] = {}
    for number, line in _candidates(text, wanted, stop):
        found = _sample(line, wanted, number, stop)
        if found is not None:
            sums[found[0]] = sums.get(found[0], 0.0) + found[1]
    return sums


def read(text: str, names: Iterable[str], stop: Stop | None = None) -> Gauges:
    """The gauges ``names`` in ``text`` (see the module's doc): each a finite sum of its
    samples, or a problem saying why it has no value (a malformed line spoils only its own
    metric). ``Stopped`` when ``stop`` says so (asked every ``CHECK_EVERY`` lines): a page
    read in part has no value."""
    wanted = frozenset(names)
    sums: dict[str, float] = {}
    broken: dict[str, str] = {}
    for number, line in _candidates(text, wanted, stop):
        try:
            found = _sample(line, wanted, number, stop)
        except ParseError as e:
            m = NAME_RE.match(line)
            broken.setdefault(m.group() if m else "", str(e))
            continue
        if found is not None:
            sums[found[0]] = sums.get(found[0], 0.0) + found[1]
    values: dict[str, float] = {}
    problems: dict[str, str] = {}
    for n in sorted(wanted):
        v = sums.get(n)
        if n in broken:
            problems[n] = broken[n]
        elif v is None:
            problems[n] = f"no sample of {n} in the page"
        elif not math.isfinite(v):
            problems[n] = f"{n} is {v} (not a finite number)"
        else:
            values[n] = v
    return Gauges(values, problems)
