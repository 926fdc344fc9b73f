"""``elastin recommend [SERVICE]``: the vertical recommendation beside the request and the use.

One row per running instance of each service (or of SERVICE): its cpu and memory request
now, what it uses now, and the service's recommendation (target, and the lower..upper range
within which a request is left alone), with the mode (``off``, ``recommend``, ``auto``) and
why. ``--json`` prints ``GET /v1/recommendations`` as it is. The recommender runs in the
server (``elastin.server.vertical``), fed with the agents' one-second samples.
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from elastin.cli.common import client, console, errors, print_json
from elastin.model.units import format_cpu, format_size


def _cpu(v: Any) -> str:
    return "-" if v is None else format_cpu(round(float(v)))


def _mem(v: Any) -> str:
    return "-" if v is None else format_size(int(v))


def _pair(r: dict[str, Any] | None) -> tuple[str, str]:
    if not r:
        return "-", "-"
    return _cpu(r.get("cpu")), _mem(r.get("memory"))


def recommend_table(services: list[dict[str, Any]]) -> Table:
    """The services' recommendations, one row per instance (a service without any: one)."""
    t = Table(box=None, pad_edge=False)
    for col in (
        "SERVICE",
        "MODE",
        "INSTANCE",
        "CPU REQ",
        "CPU USE",
        "CPU REC",
        "MEM REQ",
        "MEM USE",
        "MEM REC",
        "WHY",
    ):
        t.add_column(col, no_wrap=col != "WHY")
    for s in services:
        rec = s.get("recommendation")
        target = rec["target"] if rec else None
        lower, upper = (rec["lower"], rec["upper"]) if rec else ({}, {})
        cpu_rec = (
            f"{_cpu(target['cpu'])} ({_cpu(lower['cpu'])}..{_cpu(upper['cpu'])})" if target else "-"
        )
        mem_rec = (
            f"{_mem(target['memory'])} ({_mem(lower['memory'])}..{_mem(upper['memory'])})"
            if target
            else "-"
        )
        why = (
            rec["reason"]
            if rec
            else ("vertical scaling is off" if s["mode"] == "off" else "no sample yet")
        )
        name = f"{s['app']}/{s['service']}"
        mode = Text(s["mode"], style="bold" if s["mode"] == "auto" else "")
        rows = s.get("instances") or [None]
        for inst in rows:
            req = _pair(inst["request"] if inst else s["request"])
            use = inst.get("use") if inst else None
            use_cpu, use_mem = (_cpu(use["cpu"]), _mem(use["memory"])) if use else ("-", "-")
            outside = bool(inst and inst.get("outside"))
            style = "yellow" if outside else ""
            t.add_row(
                name,
                mode,
                inst["name"] if inst else "-",
                Text(req[0], style=style),
                use_cpu,
                cpu_rec,
                Text(req[1], style=style),
                use_mem,
                mem_rec,
                why,
            )
    return t


@click.command()
@click.argument("service", required=False, default="")
@click.option("--json", "as_json", is_flag=True, help="the server's answer as JSON")
def recommend(service: str, as_json: bool) -> None:
    """Vertical recommendations: each instance's cpu and memory request, its use now, and
    what the recommender proposes (target, and the range left alone), side by side.

    \b
    SERVICE: name or app/name (default: every service). A request outside the range shows
    in yellow: in `autoscale.vertical.mode: auto` the server resizes such instances in
    place (a live cgroup update, same pid) when their node has room, else moves them; in
    `recommend` it only shows it; `off` computes nothing (docs/autoscaling.md).
    """
    with errors(), client() as c:
        data = c.recommendations(service)
        if as_json:
            print_json(data)
            return
        services = data.get("services", [])
        if not services:
            console.print("no services")
            return
        console.print(recommend_table(services))
