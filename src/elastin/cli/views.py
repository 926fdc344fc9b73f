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
from rich.live import Live

from elastin import __version__
from elastin.cli import render
from elastin.cli.common import client, console, errors, print_json
from elastin.client.http import Client


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
    short ID events name them by; `restarting` / `retrying` while one waits out a delay."""
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
        console.print(render.allocations_table(allocs))


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--once", is_flag=True, help="print once and exit (default on a non-terminal)")
def top(as_json: bool, once: bool) -> None:
    """Live cpu and memory of every running instance."""
    with errors(), client() as c:

        def rows() -> list[dict[str, Any]]:
            allocs = c.call("GET", "/v1/allocations")
            allocs = [a for a in allocs if a["status"] == "running"]
            return sorted(allocs, key=lambda a: -a.get("usage", {}).get("cpu", 0))

        if as_json:
            print_json(rows())
            return
        if once or not console.is_terminal:
            console.print(render.allocations_table(rows()))
            return
        try:
            with Live(console=console, refresh_per_second=1) as live:
                while True:  # until Ctrl-C
                    live.update(render.allocations_table(rows(), title="elastin top"))
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
def events(as_json: bool, follow: bool, limit: int) -> None:
    """What happened: applies, placements, starts, exits, OOM kills, restarts."""

    header = [True]  # the first table has the column names; following ones line up below

    def show(batch: list[dict[str, Any]]) -> None:
        if as_json:  # one JSON object per line, so that a follower can stream them
            for e in batch:
                click.echo(json.dumps(e))
        elif batch:
            console.print(render.events_table(batch, header=header[0], aligned=follow))
            header[0] = False

    with errors(), client() as c:
        data = c.events(limit=limit)
        if as_json and not follow:
            print_json(data)
            return
        show(data)
        if not follow:
            return
        since = data[-1]["rev"] if data else 0
        try:
            while True:  # until Ctrl-C
                time.sleep(1)
                new = c.events(since=since, limit=0)
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
