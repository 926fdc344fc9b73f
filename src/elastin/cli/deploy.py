"""Commands that change what runs: ``up``, ``down``, ``apply``, ``diff``, ``validate``,
``scale`` and ``stop``; and the wait until an application has settled that ``up`` and
``apply --wait`` share."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from elastin.cli import render
from elastin.cli.common import (
    EXIT_FAILED,
    EXIT_UNSETTLED,
    client,
    console,
    err_console,
    errors,
    fail,
    print_json,
    read_spec,
)
from elastin.cli.servers import check_api_limits, run_async
from elastin.client.discovery import default_data_dir, running_server
from elastin.client.errors import ClientError
from elastin.client.http import Client
from elastin.client.local import start_daemon
from elastin.model.spec import load_spec

SETTLE_WAIT = 2.0  # longest blocking query while waiting: how soon a Ctrl-C is noticed


def wait_settled(
    c: Client,
    app: str,
    timeout: float,
    show: bool = True,
    cancel: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Whether ``app`` settled (``elastin.model.settled``) within ``timeout`` s: False as soon
    as it failed, or when the time ran out or ``cancel`` was set. Waits on the server's
    blocking query (``Client.settlement``); shows each new progress summary."""
    deadline = clock() + timeout
    index, last = 0, ""
    with console.status("starting…", spinner="dots") if show else nullcontext():
        while not (cancel and cancel.is_set()):
            remaining = deadline - clock()
            if remaining <= 0:
                break
            s = c.settlement(app, index=index, wait=min(remaining, SETTLE_WAIT))
            if s["state"] == "failed":
                for w in s["workloads"]:
                    if w["state"] == "failed" and show:
                        why = w.get("reason") or "failed"
                        err_console.print(Text(f"✗ {app}/{w['name']}: {why}", style="red"))
                return False
            if s["state"] == "settled":
                return True
            if show and s["summary"] != last:
                console.print(Text("  … " + s["summary"], style="dim"))
                last = s["summary"]
            index = s["index"]
    return False


def show_app(c: Client, app: str | None = None) -> None:
    allocs = c.call("GET", "/v1/allocations", params={"app": app} if app else {})
    console.print(render.allocations_table(allocs))


def look_around(url: str) -> None:
    console.print()
    console.print(Text("Look around (in another terminal):", style="bold"))
    for cmd, what in (
        ("elastin ps", "instances, limits and measured use"),
        ("elastin top", "live cpu and memory per instance"),
        ("elastin logs frontend -f", "follow a service's output"),
        ("elastin traffic -w", "requests per second through the mesh, per service"),
        ("elastin endpoints", "every service's endpoints and whether they are ready"),
        ("elastin logs --mesh", "the requests between services, one JSON line each"),
        ("elastin events", "what happened"),
        ("elastin resources", "requested, allocated and measured, per kind and node"),
    ):
        console.print(f"  [cyan]{cmd:<28}[/] {what}")
    console.print(
        f"  API: {url}/v1  (OpenAPI: {url}/v1/openapi.json; token in "
        f"{default_data_dir() / 'token'})"
    )


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--detach", "-d", is_flag=True, help="run in the background and return")
@click.option("--port", default=4850, show_default=True, help="API port of the embedded server")
@click.option(
    "--timeout", default=120.0, show_default=True, help="seconds to wait for it to settle"
)
def up(file: str, detach: bool, port: int, timeout: float) -> None:
    """Run the application in FILE, starting a local server and agent when none runs.

    In the foreground, Ctrl-C stops the application and the server cleanly.
    """
    check_api_limits()
    with errors():
        text, name, base = read_spec(file)
    app = load_spec(Path(file)).name
    data_dir = default_data_dir()
    existing = running_server(data_dir)
    if existing or os.environ.get("ELASTIN_ADDR"):
        with errors(), client() as c:
            _apply_and_wait(c, text, name, base, app, timeout)
            show_app(c, app)
        return
    if detach:
        _up_detached(data_dir, port, text, name, base, app, timeout)
        return
    _up_foreground(data_dir, port, text, name, base, app, timeout)


def _apply_and_wait(c: Client, text: str, name: str, base: str, app: str, timeout: float) -> None:
    res = c.apply(text, file=name, base_dir=base)
    print_changes(res)
    if not wait_settled(c, app, timeout):
        show_app(c, app)
        fail(
            f"application {app!r} did not settle",
            "see `elastin ps` and `elastin events`",
            EXIT_UNSETTLED,
        )
    console.print(Text(f"✓ {app} is up", style="bold green"))


def _up_detached(
    data_dir: Path, port: int, text: str, name: str, base: str, app: str, timeout: float
) -> None:
    with errors():
        proc = start_daemon(data_dir, port=port, log_path=data_dir / "elastin.log")
    (data_dir / "daemon.pid").write_text(str(proc.pid))
    with errors(), client() as c:
        _apply_and_wait(c, text, name, base, app, timeout)
        show_app(c, app)
        look_around(c.url)
    console.print(f"running in the background (pid {proc.pid}); `elastin down` stops it")


def _up_foreground(
    data_dir: Path, port: int, text: str, name: str, base: str, app: str, timeout: float
) -> None:
    from elastin.cli.embedded import run_embedded

    outcome: dict[str, int] = {"code": 0}

    async def main(url: str, token: str, agent: Any, shutdown: asyncio.Event) -> None:
        cancel = threading.Event()  # Ctrl-C while starting: stop waiting at once

        async def mirror() -> None:
            await shutdown.wait()
            cancel.set()

        def flow() -> None:
            with Client(url, token) as c:
                res = c.apply(text, file=name, base_dir=base)
                print_changes(res)
                ok = wait_settled(c, app, timeout, cancel=cancel)
                if cancel.is_set():
                    return
                if not ok:
                    show_app(c, app)
                    render.print_error(
                        err_console,
                        f"application {app!r} did not settle",
                        "see the table above; Ctrl-C stops everything",
                    )
                    outcome["code"] = EXIT_UNSETTLED
                else:
                    console.print(Text(f"✓ {app} is up", style="bold green"))
                cancel.wait(min(6.0, timeout))  # one usage sample from the agent
                if cancel.is_set():
                    return
                show_app(c, app)
                look_around(url)
                console.print(Text("Ctrl-C stops the application and the server.", style="bold"))

        mirror_task = asyncio.create_task(mirror())
        try:
            await asyncio.to_thread(flow)
        except ClientError as e:
            render.print_error(err_console, e.message, e.hint)
            outcome["code"] = EXIT_FAILED
            shutdown.set()
            return
        finally:
            mirror_task.cancel()
        await _follow(url, token, app, shutdown)

    async def run() -> None:
        await run_embedded(data_dir, port=port, main=main, stop_workloads=True)

    run_async(run)  # a failure: one message and a non-zero exit, no traceback
    console.print(Text("stopped", style="bold"))
    sys.exit(outcome["code"])


async def _follow(url: str, token: str, app: str, shutdown: asyncio.Event) -> None:
    """Until Ctrl-C: a live view of the instances and the requests flowing through the mesh
    per service on a terminal; otherwise a traffic table every 10 s and the instances every
    30 s."""
    c = Client(url, token)
    rates = render.TrafficRates()

    def sample() -> tuple[list[dict[str, Any]], Table]:
        allocs = c.call("GET", "/v1/allocations", params={"app": app})
        rows = [r for r in c.call("GET", "/v1/mesh/traffic")["services"] if r["app"] == app]
        title = "requests through the mesh (elastin traffic -w)"
        return allocs, render.traffic_table(rows, rates.update(rows, time.monotonic()), title)

    try:
        if console.is_terminal:
            with Live(console=console, refresh_per_second=1, transient=True) as live:
                while not shutdown.is_set():
                    allocs, table = await asyncio.to_thread(sample)
                    live.update(
                        Group(
                            render.allocations_table(allocs),
                            Text(""),
                            table,
                            Text("Ctrl-C to stop", style="dim"),
                        )
                    )
                    with suppress(TimeoutError):
                        await asyncio.wait_for(shutdown.wait(), 2.0)
        else:
            for tick in itertools.count(1):  # until shutdown
                try:
                    await asyncio.wait_for(shutdown.wait(), 10.0)
                    break
                except TimeoutError:
                    allocs, table = await asyncio.to_thread(sample)
                    if tick % 3 == 0:
                        console.print(render.allocations_table(allocs))
                    console.print(table)
        console.print(Text("stopping the application…", style="bold"))
    finally:
        c.close()


def print_changes(res: dict[str, Any]) -> None:
    styles = {"add": "green", "update": "yellow", "scale": "cyan", "remove": "red"}
    signs = {"add": "+", "update": "~", "scale": "~", "remove": "-", "unchanged": "="}
    verb = "would change" if res.get("dry_run") else "applied"
    console.print(Text(f"{res['app']}: {verb}", style="bold"))
    for ch in res["changes"]:
        line = f"  {signs[ch['change']]} {ch['type']} {ch['workload']}: {ch['change']}"
        if ch.get("detail"):
            line += f" ({ch['detail']})"
        console.print(Text(line, style=styles.get(ch["change"], "dim")))


@click.command()
@click.argument("app", required=False)
def down(app: str | None) -> None:
    """Delete APP (default: every application) and stop a background server `up` started."""
    data_dir = default_data_dir()
    with errors(), client() as c:
        names = [app] if app else [a["app"]["name"] for a in c.apps()]
        for n in names:
            c.delete_app(n)
            console.print(f"deleting {n}")
        deadline = time.monotonic() + 60
        with console.status("stopping instances…"):
            while time.monotonic() < deadline:
                live = [a for a in c.allocations() if a.app in names and not a.terminal]
                if not live:
                    break
                time.sleep(0.5)
    pid_file = data_dir / "daemon.pid"
    if not app and pid_file.exists():
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            console.print(f"stopped the background server (pid {pid})")
        except (ValueError, ProcessLookupError):
            pass
        pid_file.unlink(missing_ok=True)
    console.print(Text("✓ down", style="bold green"))


# ---------------------------------------------------------------------------- apply / diff
@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="show what would change; change nothing")
@click.option("--wait/--no-wait", default=False, help="wait until the application settles")
@click.option("--timeout", default=120.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def apply(file: str, dry_run: bool, wait: bool, timeout: float, as_json: bool) -> None:
    """Apply the spec in FILE to the running server."""
    with errors(), client() as c:
        res = apply_and_show(c, file, dry_run=dry_run, as_json=as_json)
        if wait and not dry_run and not wait_settled(c, res["app"], timeout):
            fail(f"application {res['app']!r} did not settle", "see `elastin ps`", EXIT_UNSETTLED)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the changes as JSON")
def diff(file: str, as_json: bool) -> None:
    """Show what applying FILE would change (exit 0 either way)."""
    with errors(), client() as c:
        apply_and_show(c, file, dry_run=True, as_json=as_json)


def apply_and_show(c: Client, file: str, *, dry_run: bool, as_json: bool) -> dict[str, Any]:
    """Send the spec in ``file`` (``dry_run``: only say what would change) and print the
    changes, as JSON with ``as_json``."""
    text, name, base = read_spec(file)
    res: dict[str, Any] = c.apply(text, file=name, base_dir=base, dry_run=dry_run)
    if as_json:
        print_json(res)
    else:
        print_changes(res)
    return res


@click.command()
@click.argument("service")
@click.argument("replicas", type=click.IntRange(0, 1000))
def scale(service: str, replicas: int) -> None:
    """Set the number of replicas of SERVICE."""
    with errors(), client() as c:
        c.scale(service, replicas)
        console.print(f"{service}: scaled to {replicas}")


@click.command()
@click.argument("service", required=False)
def stop(service: str | None) -> None:
    """Stop SERVICE, or every workload; `apply` or `scale` starts them again."""
    with errors(), client() as c:
        stopped = c.stop(service)["stopped"]
        console.print("stopped: " + (", ".join(stopped) or "nothing"))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check a spec file without sending it anywhere."""
    with errors():
        app = load_spec(Path(file))
        console.print(
            Text(
                f"✓ {file}: application {app.name!r}, {len(app.workloads)} workload(s)",
                style="green",
            )
        )
