"""Commands that change what runs: ``up``, ``down``, ``apply``, ``diff``, ``validate``,
``scale`` and ``stop``; and the wait until an application has settled that ``up`` and
``apply --wait`` share.

A foreground ``up`` leaves nothing running behind it: SIGINT, SIGTERM, SIGHUP and a closed
stdout or stderr all stop its application, server and agent the same way. When instances
outlive their server anyway (``kill -9``), ``down`` starts the same embedded server and agent
briefly — which re-attach to them — and stops them through it.
"""

from __future__ import annotations

import asyncio
import errno
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
    SpecFile,
    check_outputs,
    client,
    console,
    err_console,
    errors,
    fail,
    left_running,
    left_running_hint,
    left_running_message,
    on_output_closed,
    print_json,
    read_spec,
)
from elastin.cli.servers import check_api_limits, run_async
from elastin.client.discovery import default_data_dir, running_server
from elastin.client.errors import ClientError
from elastin.client.http import Client
from elastin.client.local import start_daemon, stop_daemon
from elastin.clock import SYSTEM, Clock

SETTLE_WAIT = 2.0  # longest blocking query while waiting: how soon a Ctrl-C is noticed


def wait_settled(
    c: Client,
    app: str,
    timeout: float,
    show: bool = True,
    cancel: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    generation: int = 0,
) -> bool:
    """Whether ``app`` settled (``elastin.model.settled``) within ``timeout`` s: False as soon
    as it failed, or when the time ran out or ``cancel`` was set. Waits on the server's
    blocking query (``Client.settlement``); shows each new progress summary. ``generation``:
    the one the change waited for made (what apply answers): a version it made that failed
    and was rolled back fails the wait."""
    deadline = clock() + timeout
    index, last = 0, ""
    with console.status("starting…", spinner="dots") if show else nullcontext():
        while not (cancel and cancel.is_set()):
            remaining = deadline - clock()
            if remaining <= 0:
                break
            s = c.settlement(
                app, index=index, wait=min(remaining, SETTLE_WAIT), generation=generation
            )
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


def look_around(url: str, spec: SpecFile) -> None:
    """What to try next, each command as it works for ``spec``'s application."""
    services = [w.name for w in spec.app.workloads if w.type == "service"]
    first = (services or [w.name for w in spec.app.workloads] or ["SERVICE"])[0]
    console.print()
    console.print(Text("Look around (in another terminal):", style="bold"))
    for cmd, what in (
        ("elastin ps", "instances, limits and measured use"),
        ("elastin top", "live cpu and memory per instance"),
        (f"elastin logs {spec.app.name}/{first} -f", "follow a service's output"),
        ("elastin traffic -w", "requests per second through the mesh, per service"),
        ("elastin endpoints", "every service's endpoints and whether they are ready"),
        ("elastin logs --mesh", "the requests between services, one JSON line each"),
        ("elastin events", "what happened"),
        ("elastin resources", "requested, allocated and measured, per kind and node"),
    ):
        console.print(f"  [cyan]{cmd:<28}[/] {what}")
    console.print(
        f"  API: {url}/v1  (OpenAPI: {url}/v1/openapi.json; token in "
        f"{default_data_dir() / 'token'})",
        soft_wrap=True,
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

    In the foreground, Ctrl-C (or SIGTERM, SIGHUP, or its output going away) stops the
    application and the server cleanly. With --detach, a server the apply was refused by is
    stopped again; one whose application did not settle keeps running (`elastin down`).
    """
    check_api_limits()
    with errors():
        spec = read_spec(file)
    data_dir = default_data_dir()
    existing = running_server(data_dir)
    if existing or os.environ.get("ELASTIN_ADDR"):
        with errors(), client() as c:
            _apply_and_wait(c, spec, timeout)
            show_app(c, spec.app.name)
        return
    if detach:
        _up_detached(data_dir, port, spec, timeout)
        return
    _up_foreground(data_dir, port, spec, timeout)


def _apply_and_wait(c: Client, spec: SpecFile, timeout: float, note: str = "") -> None:
    """Apply and wait until settled; exit 4 when it does not (``note`` added to the hint)."""
    res = c.apply(spec.text, file=spec.file, base_dir=spec.base_dir)
    print_changes(res)
    _wait_or_fail(c, spec, timeout, note, res.get("generation", 0))


def _wait_or_fail(
    c: Client, spec: SpecFile, timeout: float, note: str = "", generation: int = 0
) -> None:
    app = spec.app.name
    if not wait_settled(c, app, timeout, generation=generation):
        show_app(c, app)
        hint = "see `elastin ps` and `elastin events`"
        fail(
            f"application {app!r} did not settle",
            f"{hint}; {note}" if note else hint,
            EXIT_UNSETTLED,
        )
    console.print(Text(f"✓ {app} is up", style="bold green"))


DETACHED_NOTE = "the server keeps running in the background: `elastin down` stops it"


def _up_detached(data_dir: Path, port: int, spec: SpecFile, timeout: float) -> None:
    """Start the background server, apply, wait. A refused apply (or no answer) stops the
    server again — nothing runs in it; an application that did not settle leaves it running,
    and the error says so."""
    with errors():
        proc = start_daemon(data_dir, port=port, log_path=data_dir / "elastin.log")
    pid_file = data_dir / "daemon.pid"
    pid_file.write_text(str(proc.pid))
    with errors(), client() as c:
        try:
            res = c.apply(spec.text, file=spec.file, base_dir=spec.base_dir)
        except BaseException:
            stop_daemon(proc)
            pid_file.unlink(missing_ok=True)
            err_console.print(
                f"stopped the background server `up --detach` started (pid {proc.pid}): "
                "the apply did not go through",
                style="yellow",
            )
            raise
        print_changes(res)
        _wait_or_fail(c, spec, timeout, DETACHED_NOTE, res.get("generation", 0))
        show_app(c, spec.app.name)
        look_around(c.url, spec)
    console.print(f"running in the background (pid {proc.pid}); `elastin down` stops it")


UP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What stops a foreground ``up`` (its application, server and agent)."""


def _up_foreground(data_dir: Path, port: int, spec: SpecFile, timeout: float) -> None:
    from elastin.cli.embedded import run_embedded

    outcome: dict[str, int] = {"code": 0}
    app = spec.app.name

    async def main(url: str, token: str, agent: Any, shutdown: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        cancel = threading.Event()  # Ctrl-C while starting: stop waiting at once

        # nothing reads our output any more (`| tee` ended, the terminal closed): stop all
        def closed() -> None:
            loop.call_soon_threadsafe(shutdown.set)

        forget = on_output_closed(closed)

        async def mirror() -> None:
            await shutdown.wait()
            check_outputs()  # a hung-up terminal (SIGHUP): print nothing more
            cancel.set()

        def flow() -> None:
            with Client(url, token) as c:
                res = c.apply(spec.text, file=spec.file, base_dir=spec.base_dir)
                print_changes(res)
                ok = wait_settled(
                    c, app, timeout, cancel=cancel, generation=res.get("generation", 0)
                )
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
                look_around(url, spec)
                console.print(Text("Ctrl-C stops the application and the server.", style="bold"))

        mirror_task = asyncio.create_task(mirror())
        try:
            try:
                await asyncio.to_thread(flow)
            except ClientError as e:
                render.print_error(err_console, e.message, e.hint)
                outcome["code"] = EXIT_FAILED
                shutdown.set()
                return
            except OSError as e:  # a write to a closed terminal (EIO) or pipe
                if e.errno not in (errno.EIO, errno.EPIPE):
                    raise
                check_outputs()
                shutdown.set()
                return
            finally:
                mirror_task.cancel()
            await _follow(url, token, app, shutdown)
        finally:
            forget()

    async def run() -> None:
        await run_embedded(data_dir, port=port, main=main, stop_workloads=True, signals=UP_SIGNALS)

    run_async(run)  # a failure: one message and a non-zero exit, no traceback
    console.print(Text("stopped", style="bold"))
    sys.exit(outcome["code"])


async def _follow(url: str, token: str, app: str, shutdown: asyncio.Event) -> None:
    """Until ``shutdown``: a live view of the instances and the requests flowing through the
    mesh per service on a terminal; otherwise a traffic table every 10 s and the instances
    every 30 s. Every second or two it looks whether anyone still reads its output
    (``check_outputs``: a closed output stops everything, through ``on_output_closed``)."""
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
                    check_outputs()  # before the Live view writes again
        else:
            for tick in itertools.count(1):  # every second until shutdown
                try:
                    await asyncio.wait_for(shutdown.wait(), 1.0)
                    break
                except TimeoutError:
                    if check_outputs():
                        break
                    if tick % 10 == 0:
                        allocs, table = await asyncio.to_thread(sample)
                        if tick % 30 == 0:
                            console.print(render.allocations_table(allocs))
                        console.print(table)
        check_outputs()
        console.print(Text("stopping the application…", style="bold"))
    finally:
        c.close()


def print_changes(res: dict[str, Any]) -> None:
    styles = {
        "add": "green",
        "update": "yellow",
        "scale": "cyan",
        "configure": "cyan",
        "remove": "red",
    }
    signs = {
        "add": "+",
        "update": "~",
        "scale": "~",
        "configure": "~",
        "remove": "-",
        "unchanged": "=",
    }
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
    """Delete APP (default: every application) and stop a background server `up` started.

    When no server runs here but instances Elastin started still do (a killed `up`), it
    starts the server and agent here briefly, which re-attach to them, and stops them."""
    data_dir = default_data_dir()
    if not os.environ.get("ELASTIN_ADDR") and running_server(data_dir) is None:
        left = left_running(data_dir)
        if left:
            _down_left_running(data_dir, app)
            return
    with errors(), client() as c:
        delete_apps(c, app)
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


def delete_apps(c: Client, app: str | None, timeout: float = 60.0) -> None:
    """Delete ``app`` (None: every application) and wait up to ``timeout`` s until their
    instances stopped."""
    names = [app] if app else [a["app"]["name"] for a in c.apps()]
    for n in names:
        c.delete_app(n)
        console.print(f"deleting {n}")
    deadline = time.monotonic() + timeout
    with console.status("stopping instances…"):
        while time.monotonic() < deadline:
            live = [a for a in c.allocations(all=True) if a.app in names and not a.terminal]
            if not live:
                break
            time.sleep(0.5)


REATTACH_WAIT = 30.0  # longest wait for the brief agent to re-attach to what was left running


def _down_left_running(data_dir: Path, app: str | None) -> None:
    """``down`` with no server running but instances left running: the embedded server and
    agent ``up`` runs, started briefly (any free port); the agent re-attaches to the
    instances, ``delete_apps`` deletes, and — without APP — the shutdown stops whatever is
    still running (``run_embedded``'s ``stop_workloads``)."""
    from elastin.cli.embedded import run_embedded

    left = left_running(data_dir)
    console.print(
        f"{left_running_message(left)}: starting the server and agent here briefly to stop them",
        soft_wrap=True,
    )
    outcome: dict[str, int] = {"code": 0}

    async def main(url: str, token: str, agent: Any, shutdown: asyncio.Event) -> None:
        await _reattached(agent, {x.alloc_id for x in left})

        def flow() -> None:
            with Client(url, token) as c:
                delete_apps(c, app)

        try:
            await asyncio.to_thread(flow)
        except ClientError as e:
            render.print_error(err_console, e.message, e.hint)
            outcome["code"] = EXIT_FAILED

    async def run() -> None:
        await run_embedded(data_dir, port=0, main=main, stop_workloads=app is None)

    run_async(run)
    if outcome["code"]:
        sys.exit(outcome["code"])
    still = left_running(data_dir)
    if still and not app:
        fail(left_running_message(still), "see the log above; `elastin down` tries again")
    if still:
        console.print(f"{left_running_message(still)}: {left_running_hint(still)}", soft_wrap=True)
    console.print(Text("✓ down", style="bold green"))


async def _reattached(agent: Any, alloc_ids: set[str], clock: Clock = SYSTEM) -> None:
    """Wait (up to ``REATTACH_WAIT``) until ``agent`` has re-attached to the instances it
    found handles of: it sets up its mesh manager right after (which then owns the node's
    HAProxy, so that the shutdown stops that too)."""
    deadline = clock.monotonic() + REATTACH_WAIT
    while clock.monotonic() < deadline:
        if agent.mesh is not None if agent.cfg.mesh else alloc_ids <= agent.runners.keys():
            return
        await clock.sleep(0.1)


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
        if (
            wait
            and not dry_run
            and not wait_settled(c, res["app"], timeout, generation=res.get("generation", 0))
        ):
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
    spec = read_spec(file)
    res: dict[str, Any] = c.apply(
        spec.text, file=spec.file, base_dir=spec.base_dir, dry_run=dry_run
    )
    if as_json:
        print_json(res)
    else:
        print_changes(res)
    return res


@click.command(context_settings={"ignore_unknown_options": True})  # `scale web -1`: a value
@click.argument("service")
@click.argument("replicas", type=int)
def scale(service: str, replicas: int) -> None:
    """Set the number of replicas of SERVICE (0 to 1000).

    An autoscaled service takes a count within its autoscale min..max (the autoscaler goes
    on from it) or 0: that pauses its autoscaler until scaled again, but a service with
    min 0 is only scaled to zero (the next request starts it again; `elastin stop` keeps it
    down). Any other count is refused: change min / max in the spec instead."""
    with errors(), client() as c:
        answer = c.scale(service, replicas)
        note = answer.get("note") if isinstance(answer, dict) else ""
        console.print(f"{service}: scaled to {replicas}" + (f" ({note})" if note else ""))


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
        app = read_spec(file).app
        console.print(
            Text(
                f"✓ {file}: application {app.name!r}, {len(app.workloads)} workload(s)",
                style="green",
            )
        )
