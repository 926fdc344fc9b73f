"""Commands that read and show: ``ps``, ``top``, ``endpoints``, ``traffic``, ``nodes``,
``events``, ``resources``, ``status`` and ``version``. Each is a few API calls through
``elastin.client`` and a table from ``render`` (or JSON with ``--json``)."""

from __future__ import annotations

import itertools
import json
import sys
import time
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from elastin import __version__
from elastin.cli import render
from elastin.cli.common import client, console, errors, print_json
from elastin.client.errors import ApiError
from elastin.client.http import Client
from elastin.model.units import format_cpu, format_size


@click.command()
@click.option(
    "--all",
    "-a",
    "show_all",
    is_flag=True,
    help="include stopped and lost instances, and those of deleted applications",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def ps(show_all: bool, as_json: bool) -> None:
    """List services and jobs, and their instances with limits and measured use.

    Instances are listed by application, workload and index (the newest first), with the
    short ID events name them by; `restarting` / `retrying` while one waits out a delay.
    An autoscaled service shows its bounds, each metric's current value against its target
    and the last decision (`elastin events --service NAME` says why each one was taken)."""
    with errors(), client() as c:
        services = c.services()
        allocs = c.call("GET", "/v1/allocations", params={"all": show_all})
        if as_json:
            print_json({"services": services, "allocations": allocs})
            return
        if not services:
            console.print("no applications; `elastin up FILE` runs one")
            return
        console.print(render.services_table(services))
        console.print()
        auto = autoscale_table(services)
        if auto is not None:
            console.print(auto)
            console.print()
        console.print(render.allocations_table(allocs))


def _metric_value(kind: str, v: float | None) -> str:
    """A metric's value in its target's unit: cpu/memory as a share of the request."""
    if v is None:
        return "-"
    if kind in ("cpu", "memory"):
        return f"{v * 100:.0f}%"
    if kind == "p99":
        return f"{v * 1000:.0f}ms"
    if kind == "rps":
        return f"{v:.4g}/s"
    return f"{v:.4g}"


def autoscale_table(services: list[dict[str, Any]]) -> Table | None:
    """Per autoscaled service: replicas now and desired, min..max, each metric's current
    value against its target (p99 <=: not measured, the longest response, an upper bound) and
    the last decision's reason (what it proposed and what limited it). None when no service is
    autoscaled."""
    rows = [s for s in services if s.get("autoscale")]
    if not rows:
        return None
    t = Table(show_edge=False, header_style="bold")
    for col in ("AUTOSCALED", "REPLICAS", "MIN..MAX", "METRICS now (target)", "LAST DECISION"):
        t.add_column(col, no_wrap=col != "LAST DECISION")
    for s in rows:
        a = s["autoscale"]
        metrics = []
        for m in a["metrics"]:
            # p99 "<=": the longest response stood in for it (an upper bound), unless measured
            bound = m.get("source") != "p99_response_ms"
            prefix = "<=" if m["kind"] == "p99" and m["value"] is not None and bound else ""
            value = prefix + _metric_value(m["kind"], m["value"])
            metrics.append(f"{m['metric']} {value} ({_metric_value(m['kind'], m['target'])})")
        replicas = str(a["current"])
        if a["desired"] != a["current"]:
            replicas += f" → {a['desired']}"
        t.add_row(
            f"{s['app']}/{s['name']}",
            replicas,
            f"{a['min']}..{a['max']}",
            ", ".join(metrics),
            a["reason"] if a.get("at") else "not evaluated yet",
        )
    return t


def _now(metric: Any) -> Any:
    """A windows metric's current value; a replica's ``gauges`` (name -> metric): name ->
    current value."""
    if isinstance(metric, dict) and "current" in metric:
        return metric["current"]
    if isinstance(metric, dict):
        return {k: _now(v) for k, v in metric.items()}
    return metric


def live_services(c: Client, services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every service that runs, with its current metrics (``GET /v1/metrics/services``: the
    agents' one-second reports; a replica's application gauges under ``gauges``) and, when
    it is autoscaled on application metrics, their last values against their targets
    (``app_metrics``, the autoscaler's); one without any yet has none."""
    out = []
    for s in services:
        if s["type"] != "service" or not s["running"]:
            continue
        try:
            m = c.service_metrics(s["app"], s["name"], 1)
        except ApiError:  # deleted meanwhile, or a server without the route
            continue
        out.append(
            {
                "app": s["app"],
                "name": s["name"],
                "total": {k: v["current"] for k, v in m["total"].items()},
                "replicas": {
                    a: {k: _now(v) for k, v in r.items()} for a, r in m["replicas"].items()
                },
                "app_metrics": [
                    x for x in (s.get("autoscale") or {}).get("metrics", []) if x["kind"] == "app"
                ],
            }
        )
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}ms"


def _p99_or_max(total: dict[str, Any]) -> str:
    """The ``P99 / MAX`` cell: the measured p99 of the last second (``p99_response_ms``: a
    service autoscaled on p99, whose proxies keep a latency histogram) named ``p99``, else the
    longest response named ``max`` (p99 is at most that); ``-`` without traffic."""
    p99, longest = total.get("p99_response_ms"), total.get("max_response_ms")
    if p99 is not None:
        return f"{_ms(p99)} p99"
    return "-" if longest is None else f"{_ms(longest)} max"


def services_live_table(rows: list[dict[str, Any]]) -> Table:
    """Per service: ready replicas, cpu and memory against their requests, requests per
    second, in flight and response times (average; the measured p99 when the service has one,
    else the longest, each cell saying which: ``_p99_or_max``), and when a service is
    autoscaled on application gauges, each one's value (the replicas' average) against its
    target."""
    t = Table(show_edge=False, header_style="bold")
    gauges = any(s.get("app_metrics") for s in rows)
    for col in (
        "SERVICE",
        "READY",
        "CPU (use/request)",
        "MEMORY (use/request)",
        "REQ/S",
        "IN FLIGHT",
        "AVG",
        "P99 / MAX",
        *(("APP METRICS now (target)",) if gauges else ()),
    ):
        t.add_column(col, no_wrap=True)
    for s in rows:
        m = s["total"]
        cpu, mem = m.get("cpu"), m.get("memory")
        rps, flight = m.get("requests_per_s"), m.get("in_flight")
        t.add_row(
            f"{s['app']}/{s['name']}",
            f"{m.get('ready') or 0}/{m.get('replicas') or 0}",
            "-" if cpu is None else f"{format_cpu(cpu)}/{format_cpu(m.get('cpu_request') or 0)}",
            "-"
            if mem is None
            else f"{format_size(mem)}/{format_size(m.get('memory_request') or 0)}",
            "-" if rps is None else f"{rps:.1f}",
            "-" if flight is None else f"{flight:.0f}",
            _ms(m.get("avg_response_ms")),
            _p99_or_max(m),
            *(
                (
                    ", ".join(
                        f"{x['metric']} {_metric_value('app', x['value'])} "
                        f"({_metric_value('app', x['target'])})"
                        for x in s.get("app_metrics", [])
                    )
                    or "-",
                )
                if gauges
                else ()
            ),
        )
    return t


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--once", is_flag=True, help="print once and exit (default on a non-terminal)")
def top(as_json: bool, once: bool) -> None:
    """Live cpu and memory of every running instance, and per service its requests per
    second, requests in flight and response times through the mesh (the average, and the
    measured p99 of a service autoscaled on p99 or else the longest response, an upper bound
    of p99: the cell says `p99` or `max`), and the application metrics it is autoscaled on
    against their targets.

    The numbers come from the agents' one-second reports (the server keeps five minutes of
    them in memory). With --json, the running instances as before, each with `live`: its
    current metrics (requests/s, in flight, ..., `gauges`: the application gauges read from
    it) when its service has some."""
    with errors(), client() as c:

        def rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            allocs = c.call("GET", "/v1/allocations")
            allocs = [a for a in allocs if a["status"] == "running"]
            allocs.sort(key=lambda a: -a.get("usage", {}).get("cpu", 0))
            return allocs, live_services(c, c.services())

        def tables(title: str = "") -> Group:
            allocs, services = rows()
            return Group(
                render.allocations_table(allocs, title=title),
                Text(""),
                services_live_table(services),
            )

        if as_json:
            allocs, services = rows()
            live = {a: r for s in services for a, r in s["replicas"].items()}
            print_json([{**a, "live": live[a["id"]]} if a["id"] in live else a for a in allocs])
            return
        if once or not console.is_terminal:
            console.print(tables())
            return
        try:
            with Live(console=console, refresh_per_second=1) as live_view:
                while True:  # until Ctrl-C
                    live_view.update(tables("elastin top"))
                    time.sleep(2)
        except KeyboardInterrupt:
            pass


@click.command()
@click.argument("service", required=False, default="")
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", "-w", is_flag=True, help="print again whenever an endpoint changes")
def endpoints(service: str, as_json: bool, watch: bool) -> None:
    """The service registry: every service port with its endpoints and their readiness.

    SERVICE is `name` or `app/name` (all services when left out). With --watch, a blocking
    query prints the registry again each time an endpoint changes (Ctrl-C ends it); with
    --json too, one JSON object per change."""
    with errors(), client() as c:
        data = c.mesh_services(service)
        while True:  # once, or with --watch until Ctrl-C
            if as_json and watch:
                click.echo(json.dumps(data))
            elif as_json:
                print_json(data)
            else:
                title = f"version {data['index']}" if watch else ""
                console.print(render.endpoints_table(data["services"], title))
            if not watch:
                return
            try:
                data = next_change(c, service, data)
            except KeyboardInterrupt:
                return


def next_change(c: Client, service: str, last: dict[str, Any]) -> dict[str, Any]:
    """The registry once its endpoints differ from ``last``'s: a new mesh version that
    changed nothing here (another service's, a health check's timestamp) is waited past."""
    data = last
    while True:
        data = dict(c.mesh_services(service, index=data["index"], wait=30))
        if data["services"] != last["services"]:
            return data


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", "-w", is_flag=True, help="refresh every 5 s with rates (Ctrl-C ends)")
def traffic(as_json: bool, watch: bool) -> None:
    """Requests through the service mesh per service: totals, errors, retries, in flight,
    average response time and endpoints up, summed over every node's proxy. With --watch,
    requests per second too."""
    with errors(), client() as c:
        if as_json:
            print_json(c.call("GET", "/v1/mesh/traffic"))
            return
        rates = render.TrafficRates()
        for i in itertools.count():  # once, or with --watch until Ctrl-C
            rows = c.call("GET", "/v1/mesh/traffic")["services"]
            r = rates.update(rows, time.monotonic())
            console.print(render.traffic_table(rows, r if i else None))
            if not watch:
                return
            try:
                time.sleep(5)
            except KeyboardInterrupt:
                return


@click.command()
@click.option("--json", "as_json", is_flag=True)
def nodes(as_json: bool) -> None:
    """List nodes with their drivers, capacity and use."""
    with errors(), client() as c:
        data = c.nodes()
        if as_json:
            print_json(data)
        else:
            console.print(render.nodes_table(data))


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--follow", "-f", is_flag=True, help="keep printing new events (one header)")
@click.option("--limit", default=50, show_default=True)
@click.option(
    "--service",
    "-s",
    default="",
    help="only events about this service or job (`name` or `app/name`) and its instances",
)
def events(as_json: bool, follow: bool, limit: int, service: str) -> None:
    """What happened: applies, placements, starts, exits, OOM kills, restarts, and each
    autoscaling decision (`service.autoscaled`; `service.autoscale_held` when a limit held
    a change back): the metric values, proposals, bounds and the limiting policy, in the
    message and, with --json, in `data`. With --follow, the recent ones (matching --service)
    first, then each new one as it happens."""

    header = [True]  # the first table has the column names; following ones line up below

    def show(batch: list[dict[str, Any]]) -> None:
        if as_json:  # one JSON object per line, so that a follower can stream them
            for e in batch:
                click.echo(json.dumps(e))
        elif batch:
            console.print(render.events_table(batch, header=header[0], aligned=follow))
            header[0] = False

    def fetch(c: Client, since: int, limit: int) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = c.events(since, limit, service)
        return got

    with errors(), client() as c:
        # following: new events are those after the newest one printed — with --service,
        # after the newest of all (asked before the recent matching ones, so that none falls
        # between), not every one since the first until one matches
        newest = c.events(0, 1) if follow and service else []
        now = int(newest[-1]["rev"]) if newest else 0
        data = fetch(c, 0, limit)
        if as_json and not follow:
            print_json(data)
            return
        show(data)
        if service and not data and not as_json:
            known = {s["name"] for s in c.services()} | {
                f"{s['app']}/{s['name']}" for s in c.services()
            }
            say = "no events about" if service in known else "no service or job named"
            click.echo(f"{say} {service!r}", err=True)
        if not follow:
            return
        since = max(now, data[-1]["rev"] if data else 0)
        try:
            while True:  # until Ctrl-C
                time.sleep(1)
                new = fetch(c, since, 0)
                if new:
                    since = new[-1]["rev"]
                    show(new)
        except KeyboardInterrupt:
            pass


@click.command()
@click.option("--json", "as_json", is_flag=True)
def resources(as_json: bool) -> None:
    """Requested, allocated and measured resources: per kind (R/C/A totals), node, cluster."""
    with errors(), client() as c:
        data = c.resources()
        if as_json:
            print_json(data)
            return
        for t in render.resources_tables(data):
            console.print(t)
            console.print()


@click.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Whether a server runs here, its address and revision."""
    with errors(), client() as c:
        data = c.status()
        data["url"] = c.url
        if as_json:
            print_json(data)
        else:
            console.print(
                f"server {data['url']} (version {data['version']}, pid {data['pid']}, "
                f"revision {data['revision']}, data in {data['data_dir']})"
            )


@click.command()
@click.option("--json", "as_json", is_flag=True)
def version(as_json: bool) -> None:
    """Print the version."""
    if as_json:
        print_json({"version": __version__, "python": sys.version.split()[0]})
    else:
        click.echo(f"elastin {__version__}")
