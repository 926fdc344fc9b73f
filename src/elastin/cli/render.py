"""Tables and messages the CLI prints. Presentation only: data in, rich renderables out."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from elastin.model.units import format_cpu, format_size

STATUS_STYLE = {
    "running": "green",
    "complete": "cyan",
    "pending": "yellow",
    "starting": "yellow",
    "failed": "red",
    "lost": "red",
    "stopped": "dim",
}


WAITING = (("restarting", "restarting"), ("retry ", "retrying"))
"""A ``starting`` allocation whose reason starts so is waiting out a delay: shown as that
(the agent reports "restarting in 4s: exited with code 1", "retry 2 in 4s: …")."""


def status_text(status: str, healthy: bool | None = None, reason: str = "") -> Text:
    label = status
    if status == "running" and healthy is False:
        label = "running (unhealthy)"
    elif status == "running" and healthy is True:
        label = "running ✓"
    elif status == "starting":
        label = next((shown for start, shown in WAITING if reason.startswith(start)), status)
    return Text(label, style=STATUS_STYLE.get(status, ""))


def short_id(alloc_id: str) -> str:
    """An allocation's id as the CLI shows it (``Allocation.short_id``)."""
    return alloc_id[:8]


def age(ts: float) -> str:
    if not ts:
        return "-"
    s = max(0, int(time.time() - ts))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def pct(used: float, limit: float) -> str:
    return f"{100 * used / limit:.0f}%" if limit else "-"


def allocations_table(allocs: list[dict[str, Any]], title: str = "") -> Table:
    t = Table(title=title or None, show_edge=False, header_style="bold")
    for col in (
        "INSTANCE",
        "ID",
        "KIND",
        "STATUS",
        "PID",
        "CPU (use/limit)",
        "MEMORY (use/limit)",
        "RESTARTS",
        "AGE",
        "NOTE",
    ):
        t.add_column(col, no_wrap=col != "NOTE")
    for a in allocs:
        r, u = a["resources"], a.get("usage") or {}
        live = a["status"] in ("running", "starting")
        cpu = (
            f"{format_cpu(u.get('cpu', 0))}/{format_cpu(r['cpu'])}"
            if live
            else format_cpu(r["cpu"])
        )
        mem = (
            f"{format_size(u.get('memory', 0))}/{format_size(r['memory'])}"
            if live
            else format_size(r["memory"])
        )
        note = a.get("reason", "")
        if a.get("exit_code") not in (None, 0) and a["status"] != "running":
            note = note or f"exit {a['exit_code']}"
        ports = ", ".join(f"{k}:{v}" for k, v in a.get("ports", []))
        if ports and live:
            note = f"{ports}  {note}".strip()
        t.add_row(
            a.get("name") or f"{a['app']}.{a['workload']}[{a['index']}]",
            Text(short_id(a.get("id", "")), style="dim"),
            a["kind"],
            status_text(a["status"], a.get("healthy"), a.get("reason", "")),
            str(a.get("pid") or "-"),
            cpu,
            mem,
            str(a.get("restarts", 0)),
            age(a.get("created_at", 0)),
            note,
        )
    return t


def services_table(services: list[dict[str, Any]]) -> Table:
    t = Table(show_edge=False, header_style="bold")
    for col in ("SERVICE", "TYPE", "KIND", "RUNNING", "CPU", "MEMORY", "PRIORITY", "USER"):
        t.add_column(col)
    for s in services:
        if s["type"] == "job":
            count = f"{s['complete']}/{s['completions']} done"
            if s["failed"]:
                count += f", {s['failed']} failed"
        else:
            count = f"{s['running']}/{s['desired']}"
            if s["stopped"]:
                count += " (stopped)"
        r = s["resources"]
        t.add_row(
            f"{s['app']}/{s['name']}",
            s["type"],
            s["kind"],
            count,
            format_cpu(r["cpu"]),
            format_size(r["memory"]),
            str(s["priority"]),
            user_cell(s.get("user", "")),
        )
    return t


def user_cell(user: str) -> Text:
    """Who a workload's instances run as; root stands out (the spec asked for it)."""
    if not user:
        return Text("dynamic", "dim")
    if user == "root":
        return Text("root", "bold red")
    return Text(user)


def endpoints_table(services: list[dict[str, Any]], title: str = "") -> Table:
    """The service registry: a row per endpoint of every service port."""
    t = Table(show_edge=False, header_style="bold", title=title or None)
    for col in ("SERVICE", "PORT", "PROTOCOL", "ENDPOINT", "ADDRESS", "NODE", "STATE"):
        t.add_column(col)
    for s in services:
        for p in s["ports"]:
            service = f"{s['app']}/{s['name']}"
            if not p["endpoints"]:
                t.add_row(service, p["name"], p["protocol"], "-", "-", "-", Text("none", "red"))
            for e in p["endpoints"]:
                t.add_row(
                    service,
                    p["name"],
                    p["protocol"],
                    e["instance"],
                    f"{e['address']}:{e['port']}",
                    e["node"],
                    Text("ready", "green") if e["ready"] else Text("not ready", "yellow"),
                )
    return t


class TrafficRates:
    """Requests (and errors) per second per service from successive ``/v1/mesh/traffic``
    samples. The counters are cumulative and move when an agent heartbeats (every 5 s), so a
    rate is taken between two samples that differ, and drops to 0 after 15 s unchanged."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[float, int, int]] = {}  # cluster -> (time, requests, errors)
        self.rates: dict[str, tuple[float, float]] = {}

    def update(self, rows: list[dict[str, Any]], now: float) -> dict[str, tuple[float, float]]:
        for r in rows:
            key, req, err = r["cluster"], r["requests"], r["errors"]
            prev = self.last.get(key)
            if prev is None:
                self.last[key] = (now, req, err)
            elif (req, err) != prev[1:]:
                dt = max(now - prev[0], 1e-6)
                self.rates[key] = (max(0, req - prev[1]) / dt, max(0, err - prev[2]) / dt)
                self.last[key] = (now, req, err)
            elif now - prev[0] > 15:
                self.rates[key] = (0.0, 0.0)
        return dict(self.rates)


def traffic_table(
    rows: list[dict[str, Any]], rates: dict[str, tuple[float, float]] | None = None, title: str = ""
) -> Table:
    """Requests through the mesh per service port."""
    t = Table(show_edge=False, header_style="bold", title=title or None)
    cols = ["SERVICE", "PORT", "MODE", "REQ/S", "REQUESTS", "ERRORS", "RETRIES", "IN FLIGHT"]
    for col in [*cols, "AVG MS", "ENDPOINTS UP"]:
        t.add_column(col, justify="left" if col in ("SERVICE", "PORT", "MODE") else "right")
    for r in rows:
        rate = (rates or {}).get(r["cluster"])
        t.add_row(
            f"{r['app']}/{r['service']}",
            r["port"],
            r["mode"],
            f"{rate[0]:.1f}" if rate else "-",
            str(r["requests"]),
            Text(str(r["errors"]), style="red" if r["errors"] else ""),
            str(r["retries"]),
            str(r["in_flight"]),
            str(r["avg_response_ms"]),
            str(r["endpoints_up"]),
        )
    return t


def nodes_table(nodes: list[dict[str, Any]]) -> Table:
    t = Table(show_edge=False, header_style="bold")
    for col in ("NODE", "ID", "STATUS", "DRIVERS", "CGROUPS", "CPU (use/cap)", "MEMORY (use/cap)"):
        t.add_column(col)
    for n in nodes:
        c, u = n["capacity"], n.get("usage") or {}
        t.add_row(
            n["name"],
            n["id"],
            Text(n["status"], style="green" if n["status"] == "ready" else "red"),
            ", ".join(n["drivers"]) or "-",
            n.get("cgroup_version") or "-",
            f"{format_cpu(u.get('cpu', 0))}/{format_cpu(c['cpu'])}",
            f"{format_size(u.get('memory', 0))}/{format_size(c['memory'])}",
        )
    return t


EVENT_WIDTHS = {"TIME": 8, "TYPE": 20, "SUBJECT": 34}
"""Columns of ``events -f``: its tables follow one another under one header."""


def events_table(events: list[dict[str, Any]], header: bool = True, aligned: bool = False) -> Table:
    """Events, a row each; ``aligned``: with the same column widths in every table (as long
    as a cell fits), so that tables printed one after another line up under the first
    one's ``header``."""
    t = Table(show_edge=False, header_style="bold", show_header=header)
    for col in ("TIME", "TYPE", "SUBJECT", "MESSAGE"):
        width = EVENT_WIDTHS.get(col) if aligned else None
        t.add_column(col, no_wrap=col != "MESSAGE", min_width=width)
    for e in events:
        style = {"warning": "yellow", "error": "red"}.get(e.get("level", ""), "")
        t.add_row(
            time.strftime("%H:%M:%S", time.localtime(e["time"])),
            Text(e["type"], style=style),
            e["subject"],
            e["message"],
        )
    return t


def _res(r: dict[str, Any]) -> tuple[str, str, str]:
    return (
        format_cpu(r.get("cpu", 0)),
        format_size(r.get("memory", 0)),
        format_size(r.get("disk", 0)),
    )


def resources_tables(report: dict[str, Any]) -> list[Table]:
    out = []
    t = Table(
        title="Requested by kind (Σ request × instances)", show_edge=False, header_style="bold"
    )
    for col in (
        "KIND",
        "FORMULA",
        "CPU",
        "MEMORY",
        "DISK",
        "ALLOCATED CPU",
        "ALLOCATED MEM",
        "MEASURED CPU",
        "MEASURED MEM",
    ):
        t.add_column(col)
    for k in report.get("kinds", []):
        rq, al, ms = _res(k["requested"]), _res(k["allocated"]), _res(k["measured"])
        t.add_row(k["kind"], k.get("formula", ""), *rq, al[0], al[1], ms[0], ms[1])
    out.append(t)
    t = Table(title="Per node", show_edge=False, header_style="bold")
    for col in (
        "NODE",
        "CAPACITY CPU",
        "CAPACITY MEM",
        "ALLOCATED CPU",
        "ALLOCATED MEM",
        "FREE CPU",
        "FREE MEM",
        "MEASURED CPU",
        "MEASURED MEM",
    ):
        t.add_column(col)
    for n in report.get("nodes", []):
        cap, al, fr, ms = (
            _res(n["capacity"]),
            _res(n["allocated"]),
            _res(n["free"]),
            _res(n["measured"]),
        )
        t.add_row(
            n.get("name", n.get("node_id", "")),
            cap[0],
            cap[1],
            al[0],
            al[1],
            fr[0],
            fr[1],
            ms[0],
            ms[1],
        )
    c = report.get("cluster")
    if c:
        cap, al, fr, ms = (
            _res(c["capacity"]),
            _res(c["allocated"]),
            _res(c["free"]),
            _res(c["measured"]),
        )
        t.add_row(
            Text("cluster", style="bold"), cap[0], cap[1], al[0], al[1], fr[0], fr[1], ms[0], ms[1]
        )
    out.append(t)
    return out


def print_error(console: Console, message: str, hint: str = "") -> None:
    """An error and how to fix it, a line each: never broken inside (paths and commands in
    them stay whole to copy; the terminal wraps what is too long)."""
    console.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    if hint:
        console.print(Text("  hint: ", style="yellow") + Text(hint), soft_wrap=True)
