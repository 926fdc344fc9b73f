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
  not this reader's business (Prometheus would refuse the whole scrape).

``read`` answers the values found and, per name it could not read, why: absent, a malformed
sample line (its line number), or a value that is not a finite number (``NaN``, ``±Inf``, or a
sum that overflowed) — a gauge the autoscaler cannot use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_VALUE = r'"(?:[^"\\\n]|\\.)*"'
_LABEL = rf"[ \t]*[a-zA-Z_][a-zA-Z0-9_]*[ \t]*=[ \t]*{_LABEL_VALUE}[ \t]*"
# after the name: optional labels, the value, an optional timestamp, an optional exemplar
_REST_RE = re.compile(
    rf"(?:[ \t]*\{{(?:{_LABEL}(?:,{_LABEL})*,?[ \t]*|[ \t]*)\}}[ \t]*|[ \t]+)"
    r"(?P<value>[^ \t]+)"
    r"(?:[ \t]+(?P<ts>-?[0-9]+))?"
    r"(?:[ \t]+#.*)?[ \t]*"
)
# Go's ParseFloat as Prometheus uses it, without hexadecimal and underscores
_FLOAT_RE = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])"
)


class ParseError(ValueError):
    """A sample line of a wanted metric is malformed (the message names its line)."""


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


def _sample(line: str, names: frozenset[str] | None, number: int) -> tuple[str, float] | None:
    """``(name, value)`` of a sample line whose name is wanted (``names``; None: any), None
    for another metric's line; ``ParseError`` when a wanted one is malformed."""
    m = NAME_RE.match(line)
    if m is None:
        if names is None:
            raise ParseError(f"line {number}: no metric name at the start of {line[:80]!r}")
        return None
    name = m.group()
    if names is not None and name not in names:
        return None
    rest = _REST_RE.fullmatch(line, m.end())
    if rest is None:
        raise ParseError(
            f"line {number}: {line[:120]!r} is not a sample (name{{labels}} value [timestamp])"
        )
    try:
        return name, parse_value(rest.group("value"))
    except ValueError as e:
        raise ParseError(f"line {number}: the value of {name}: {e}") from None


def _candidates(text: str, wanted: frozenset[str] | None) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the sample lines that may be of ``wanted`` (None: every
    sample line); comments and blank lines are skipped."""
    for number, raw in enumerate(text.split("\n"), 1):
        line = (raw[:-1] if raw.endswith("\r") else raw).lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        if wanted is not None and not any(line.startswith(n) for n in wanted):
            continue  # cheap: most lines of a large page are other metrics'
        yield number, line


def parse(text: str, names: Iterable[str] | None = None) -> dict[str, float]:
    """Every sample of ``text`` (or only those of ``names``) summed by name; the sums may be
    NaN or infinite. ``ParseError`` on the first malformed line read."""
    wanted = None if names is None else frozenset(names)
    sums: dict[str, float] = {}
    for number, line in _candidates(text, wanted):
        found = _sample(line, wanted, number)
        if found is not None:
            sums[found[0]] = sums.get(found[0], 0.0) + found[1]
    return sums


def read(text: str, names: Iterable[str]) -> Gauges:
    """The gauges ``names`` in ``text`` (see the module's doc): each a finite sum of its
    samples, or a problem saying why it has no value (a malformed line spoils only its own
    metric)."""
    wanted = frozenset(names)
    sums: dict[str, float] = {}
    broken: dict[str, str] = {}
    for number, line in _candidates(text, wanted):
        try:
            found = _sample(line, wanted, number)
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
