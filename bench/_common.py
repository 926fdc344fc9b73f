"""Shared helpers of the benchmark scripts: statistics, tables and the ``--json`` shape.

Every ``bench/*.py`` builds ``Row``s and hands them to ``emit``: a human table by default
(rich when installed, plain text otherwise), or with ``--json`` the single object that
/work/shared/BENCH.md and ``bench/run_all.py`` expect::

    {"bench": name, "machine": {"cpus": N, "python": "3.11.x"},
     "results": [{"case", "system", "metric", "value", "runs"}, ...]}
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


@dataclass(frozen=True)
class Row:
    """One measured figure: the median of ``samples`` with their min and max beside."""

    case: str
    system: str
    metric: str
    samples: tuple[float, ...]

    @property
    def value(self) -> float:
        return median(self.samples)

    @property
    def runs(self) -> int:
        return len(self.samples)

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "system": self.system,
            "metric": self.metric,
            "value": round(self.value, 3),
            "runs": self.runs,
        }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def spread(values: Sequence[float]) -> tuple[float, float]:
    """``(min, max)`` of ``values`` (zeros when empty)."""
    return (min(values), max(values)) if values else (0.0, 0.0)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count() or 1, "python": platform.python_version()}


def document(bench: str, rows: Sequence[Row]) -> dict[str, Any]:
    """The ``--json`` object of BENCH.md."""
    return {"bench": bench, "machine": machine(), "results": [r.to_json() for r in rows]}


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3g}"


def table_lines(rows: Sequence[Row]) -> list[str]:
    """A plain-text table: case, system, metric, median, min-max, runs."""
    head = ("CASE", "SYSTEM", "METRIC", "MEDIAN", "MIN-MAX", "RUNS")
    body = [
        (
            r.case,
            r.system,
            r.metric,
            _fmt(r.value),
            f"{_fmt(spread(r.samples)[0])} - {_fmt(spread(r.samples)[1])}",
            str(r.runs),
        )
        for r in rows
    ]
    widths = [max(len(x[c]) for x in [head, *body]) for c in range(len(head))]
    return [
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in [head, *body]
    ]


def emit(
    bench: str, rows: Sequence[Row], *, as_json: bool, title: str = "", out: TextIO | None = None
) -> None:
    """Print ``rows`` as JSON (``as_json``) or as a human table with ``title``."""
    out = out or sys.stdout
    if as_json:
        out.write(json.dumps(document(bench, rows)) + "\n")
        return
    m = machine()
    caption = f"{m['cpus']} cpus, Python {m['python']}; median of runs, min-max beside"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency, plain text is a fallback
        if title:
            out.write(title + "\n")
        out.write("\n".join(table_lines(rows)) + "\n" + caption + "\n")
        return
    t = Table(title=title or bench, caption=caption, header_style="bold")
    for col in ("case", "system", "metric", "median", "min-max", "runs"):
        t.add_column(col, justify="right" if col in ("median", "min-max", "runs") else "left")
    for r in rows:
        lo, hi = spread(r.samples)
        t.add_row(
            r.case, r.system, r.metric, _fmt(r.value), f"{_fmt(lo)} - {_fmt(hi)}", str(r.runs)
        )
    console = Console(file=out)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(t)


def ratio_rows(
    values: Mapping[str, float], pairs: Iterable[tuple[str, str]], metric: str
) -> list[tuple[str, str, float]]:
    """``(system, "<metric>_ratio_vs_<peer>", system ÷ peer)`` for each ``(system, peer)`` of
    ``pairs`` measured in the same run (both in ``values``, the peer's figure non-zero); a
    peer's ``-`` becomes ``_`` in the metric's name (``haproxy-matched``)."""
    return [
        (name, f"{metric}_ratio_vs_{peer.replace('-', '_')}", values[name] / values[peer])
        for name, peer in pairs
        if values.get(name) and values.get(peer)
    ]


@contextlib.contextmanager
def elastin_process(
    command: Sequence[str], data: Path, env: Mapping[str, str], log: Path, stop_wait: float = 30
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    """``elastin COMMAND`` (``server``, ``daemon``...) in a session of its own with its output
    in ``log``, once it has written ``data/server.json`` (the process and what that file says);
    SIGTERM at the end (SIGKILL after ``stop_wait`` s). A benchmark exits saying why when it
    exits or does not start within 30 s."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "elastin.cli.main", *command],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    what = f"elastin {command[0]}"
    try:
        deadline = time.monotonic() + 30
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                info = json.loads((data / "server.json").read_text())
                if info["pid"] == proc.pid:
                    break
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited: " + log.read_text())
            time.sleep(0.05)
        else:
            raise SystemExit(f"{what} did not start within 30 s")
        yield proc, info
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(stop_wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
