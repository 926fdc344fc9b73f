"""The ``elastin`` command: one command, a subcommand per noun or verb.

Presentation only: every subcommand is a few API calls through ``elastin.client`` and a table.

Exit codes (scripts can trust them):
    0  success
    1  the request failed: invalid spec, unknown service, API error
    2  wrong usage (unknown option, missing argument)
    3  no server could be reached
    4  ``up`` / ``apply --wait``: the application did not settle (a workload failed or timed out)
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from elastin import __version__
from elastin.cli import render
from elastin.client.discovery import default_data_dir, find_server, read_token, running_server
from elastin.client.errors import ApiError, ClientError, ServerUnavailable
from elastin.client.http import Client
from elastin.model.errors import SpecError
from elastin.model.spec import load_spec


def _console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr)
    if not c.is_terminal:
        c.width = max(c.width, 160)  # logs and pipes: do not squeeze the tables
    return c


console = _console()
err_console = _console(stderr=True)

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_UNSETTLED = 1, 2, 3, 4


def fail(message: str, hint: str = "", code: int = EXIT_FAILED) -> NoReturn:
    render.print_error(err_console, message, hint)
    sys.exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn client errors into a message and an exit code; no traceback is a UI."""
    try:
        yield
    except ServerUnavailable as e:
        fail(e.message, e.hint, EXIT_UNAVAILABLE)
    except ApiError as e:
        if e.issues:
            err_console.print(Text(e.message), soft_wrap=True)
            err_console.print(Text("nothing was changed", style="yellow"))
            sys.exit(EXIT_FAILED)
        fail(e.message, e.hint)
    except ClientError as e:
        fail(e.message, e.hint)
    except SpecError as e:
        err_console.print(Text(e.render()), soft_wrap=True)
        err_console.print(Text("nothing was changed", style="yellow"))
        sys.exit(EXIT_FAILED)


def client() -> Client:
    return Client(*find_server())


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def read_spec(path: str) -> tuple[str, str, str]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}", "check the path of the spec file")
    load_spec(p)  # validate locally first: same messages as the server, nothing sent
    return text, str(p), str(p.resolve().parent)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="elastin")
def cli() -> None:
    """Elastin runs an application's services and jobs as tasks, containers or VMs,
    with kernel-enforced resources, on one machine or many.

    \b
    Quick start:
      elastin up examples/shop.yaml      start a server and agent here, run the app
      elastin ps                         what runs, with limits and measured use
      elastin logs frontend -f           follow a service's output
      elastin traffic -w                 requests per second between services (the mesh)
      elastin down                       stop it all

    The server's address and token are found in the data directory
    (ELASTIN_DATA_DIR, default /var/lib/elastin for root, ~/.local/share/elastin
    otherwise), or from ELASTIN_ADDR and ELASTIN_TOKEN.
    """


# ---------------------------------------------------------------------------- servers
@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=4850, show_default=True, help="port to listen on (0 = any)")
@click.option(
    "--store", "store_url", default="", help="state store URL (default: sqlite in the data dir)"
)
@click.option(
    "--scheduler",
    "algorithm",
    type=click.Choice(["binpack", "spread"]),
    default="binpack",
    show_default=True,
    help="how instances are placed on nodes",
)
def server(host: str, port: int, store_url: str, algorithm: str) -> None:
    """Run the server (API, scheduler, SQLite state) in the foreground."""
    from elastin.server.app import ServerConfig, run_server

    cfg = ServerConfig(
        default_data_dir(), host=host, port=port, store_url=store_url, algorithm=algorithm
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)

        async def ready(url: str, _: str) -> None:
            err_console.print(f"elastin server listening on {url} (data in {cfg.data_dir})")

        await run_server(cfg, on_ready=ready)

    _run_async(main)


def _loopback_port(flag: str, what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An agent option for a port on 127.0.0.1: 0 picks a free one, -1 turns it off."""
    return click.option(
        flag,
        type=click.IntRange(-1, 65535),
        default=0,
        show_default=True,
        help=f"port on 127.0.0.1 of {what} (0: any free port, -1: off)",
    )


@cli.command()
@click.option("--server", "server_url", default="", help="server URL (default: found locally)")
@click.option("--token", default="", help="API token (default: ELASTIN_TOKEN or the data dir)")
@click.option("--name", default="", help="node name (default: the host name)")
@_loopback_port("--metrics-port", "the agent's /metrics; the node's agent.metrics says where")
@_loopback_port(
    "--dns-port",
    "the DNS interface (<service>.service.elastin, UDP and TCP); instances find it in ELASTIN_DNS",
)
def agent(server_url: str, token: str, name: str, metrics_port: int, dns_port: int) -> None:
    """Run a node agent in the foreground. Its instances keep running when it stops."""
    from elastin.agent.agent import Agent, AgentConfig
    from elastin.agent.drivers.registry import default_drivers

    if server_url:
        url = server_url
        token = (
            token or os.environ.get("ELASTIN_TOKEN", "") or (read_token(default_data_dir()) or "")
        )
        if not token:
            fail(
                "no API token",
                "pass --token, set ELASTIN_TOKEN, or copy the server's token "
                "file into this machine's data directory",
                EXIT_USAGE,
            )
    else:
        with errors():
            url, found = find_server()
        token = token or found
    cfg = AgentConfig(
        data_dir=default_data_dir(),
        server_url=server_url or url,
        token=token,
        rediscover=not server_url and not os.environ.get("ELASTIN_ADDR"),
        metrics_port=None if metrics_port < 0 else metrics_port,
        dns_port=None if dns_port < 0 else dns_port,
    )
    if name:
        cfg.name = name

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        err_console.print(f"elastin agent for {cfg.server_url} (data in {cfg.data_dir})")
        await Agent(cfg, default_drivers()).run()

    _run_async(main)


def _run_async(main: Callable[[], Any]) -> None:
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except OSError as e:
        fail(str(e.strerror or e))


@cli.command(hidden=True)
@click.option("--port", default=4850)
@click.option("--stop-workloads", is_flag=True, help="stop instances when the daemon stops")
def daemon(port: int, stop_workloads: bool) -> None:
    """Server and agent in one background process (started by `up --detach`)."""
    from elastin.cli.embedded import run_embedded

    async def idle(url: str, token: str, agent: Any, shutdown: asyncio.Event) -> None:
        await shutdown.wait()

    async def main() -> None:
        await run_embedded(default_data_dir(), port=port, main=idle, stop_workloads=stop_workloads)

    _run_async(main)


# ---------------------------------------------------------------------------- up / down
def settle_state(services: list[dict[str, Any]], app: str) -> tuple[bool, bool, str]:
    """(settled, failed, summary) for an application's services and jobs."""
    mine = [s for s in services if s["app"] == app]
    parts, settled, failed = [], True, False
    for s in mine:
        if s["type"] == "job":
            done = s["complete"] >= (s["completions"] or 0)
            parts.append(f"{s['name']} {s['complete']}/{s['completions']} done")
            settled &= done or s["failed"] > 0
            failed |= s["failed"] > 0 and not done and s["running"] + s["pending"] == 0
        else:
            parts.append(f"{s['name']} {s['running']}/{s['desired']}")
            settled &= s["running"] >= s["desired"]
            failed |= s["failed"] > 0
    return settled, failed, ", ".join(parts)


def wait_settled(
    c: Client, app: str, timeout: float, show: bool = True, cancel: threading.Event | None = None
) -> bool:
    deadline = time.monotonic() + timeout
    with console.status("starting…", spinner="dots") if show else nullcontext():
        while time.monotonic() < deadline and not (cancel and cancel.is_set()):
            services = c.services()
            settled, failed, summary = settle_state(services, app)
            allocs = c.call("GET", "/v1/allocations", params={"app": app})
            healthy = all(a.get("healthy") is not False for a in allocs if a["status"] == "running")
            if failed:
                return False
            if settled and healthy:
                return True
            if show:
                _status_line(summary)
            time.sleep(0.5)
    return False


_last_line = [""]


def _status_line(summary: str) -> None:
    if summary != _last_line[0]:
        console.print(Text("  … " + summary, style="dim"))
        _last_line[0] = summary


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


@cli.command()
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
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "elastin.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "elastin.cli.main", "daemon", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    (data_dir / "daemon.pid").write_text(str(proc.pid))
    for _ in range(300):
        if running_server(data_dir) or proc.poll() is not None:
            break
        time.sleep(0.1)
    if proc.poll() is not None:
        fail(f"the background server exited ({proc.returncode})", f"see {log_path}")
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

    try:
        asyncio.run(run())
    except OSError as e:
        fail(str(e.strerror or e))
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
            for tick in range(1, 10**7):
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


@cli.command()
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
@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="show what would change; change nothing")
@click.option("--wait/--no-wait", default=False, help="wait until the application settles")
@click.option("--timeout", default=120.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def apply(file: str, dry_run: bool, wait: bool, timeout: float, as_json: bool) -> None:
    """Apply the spec in FILE to the running server."""
    with errors():
        text, name, base = read_spec(file)
        with client() as c:
            res = c.apply(text, file=name, base_dir=base, dry_run=dry_run)
            if as_json:
                print_json(res)
            else:
                print_changes(res)
            if wait and not dry_run and not wait_settled(c, res["app"], timeout):
                fail(
                    f"application {res['app']!r} did not settle", "see `elastin ps`", EXIT_UNSETTLED
                )


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the changes as JSON")
def diff(file: str, as_json: bool) -> None:
    """Show what applying FILE would change (exit 0 either way)."""
    with errors():
        text, name, base = read_spec(file)
        with client() as c:
            res = c.apply(text, file=name, base_dir=base, dry_run=True)
            if as_json:
                print_json(res)
            else:
                print_changes(res)


# ---------------------------------------------------------------------------- reads
@cli.command()
@click.option("--all", "-a", "show_all", is_flag=True, help="include stopped instances")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def ps(show_all: bool, as_json: bool) -> None:
    """List services and jobs, and their instances with limits and measured use."""
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


@cli.command()
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
                for _ in range(10**6):
                    live.update(render.allocations_table(rows(), title="elastin top"))
                    time.sleep(2)
        except KeyboardInterrupt:
            pass


@cli.command()
@click.argument("service", required=False, default="")
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", "-w", is_flag=True, help="print again whenever an endpoint changes")
def endpoints(service: str, as_json: bool, watch: bool) -> None:
    """The service registry: every service port with its endpoints and their readiness.

    SERVICE is `name` or `app/name` (all services when left out). With --watch, a blocking
    query prints the registry again each time it changes (Ctrl-C ends it); with --json too,
    one JSON object per change."""
    with errors(), client() as c:
        data = c.mesh_services(service)
        for _ in range(10**7 if watch else 1):
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
                index = data["index"]
                while data["index"] == index:
                    data = c.mesh_services(service, index=index, wait=30)
            except KeyboardInterrupt:
                return


@cli.command()
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
        for i in range(10**6 if watch else 1):
            rows = c.call("GET", "/v1/mesh/traffic")["services"]
            r = rates.update(rows, time.monotonic())
            console.print(render.traffic_table(rows, r if i else None))
            if not watch:
                return
            try:
                time.sleep(5)
            except KeyboardInterrupt:
                return


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def nodes(as_json: bool) -> None:
    """List nodes with their drivers, capacity and use."""
    with errors(), client() as c:
        data = c.nodes()
        if as_json:
            print_json(data)
        else:
            console.print(render.nodes_table(data))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--follow", "-f", is_flag=True, help="keep printing new events")
@click.option("--limit", default=50, show_default=True)
def events(as_json: bool, follow: bool, limit: int) -> None:
    """What happened: applies, placements, starts, exits, OOM kills, restarts."""

    def show(batch: list[dict[str, Any]]) -> None:
        if as_json:  # one JSON object per line, so that a follower can stream them
            for e in batch:
                click.echo(json.dumps(e))
        elif batch:
            console.print(render.events_table(batch))

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
            for _ in range(10**7):
                time.sleep(1)
                new = c.events(since=since, limit=0)
                if new:
                    since = new[-1]["rev"]
                    show(new)
        except KeyboardInterrupt:
            pass


@cli.command()
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


@cli.command()
@click.argument("service", required=False)
@click.option("--follow", "-f", is_flag=True)
@click.option("--stderr", is_flag=True, help="show stderr instead of stdout")
@click.option("--tail", default=100, show_default=True, help="lines to show first")
@click.option("--index", "-i", default=None, type=int, help="instance index (default: all)")
@click.option(
    "--mesh",
    is_flag=True,
    help="the mesh's access log (JSON lines), for SERVICE or for all services",
)
def logs(
    service: str | None, follow: bool, stderr: bool, tail: int, index: int | None, mesh: bool
) -> None:
    """Print a service's output (SERVICE is `name` or `app/name`), or with --mesh the
    requests the mesh carried."""
    if mesh:
        _mesh_logs(service, follow, tail)
        return
    if not service:
        fail("name a SERVICE (or use --mesh for the mesh's access log)", code=EXIT_USAGE)
    with errors(), client() as c:
        info = c.service(service)
        allocs = [a for a in info["allocations"] if index is None or a["index"] == index]
        if not allocs:
            fail(f"{service!r} has no instances", "is it stopped? see `elastin ps -a`")
        live = [a for a in allocs if a["status"] not in ("stopped", "lost")] or allocs[-1:]
        stream = "stderr" if stderr else "stdout"
        if follow and len(live) > 1:
            live = live[:1]
            err_console.print(f"following {live[0]['name']} (use --index to choose)")
        for a in live:
            if len(live) > 1:
                console.print(Text(f"==> {a['name']} <==", style="bold"))
            try:
                for chunk in c.logs(a["id"], stream=stream, tail=tail, follow=follow):
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
            except KeyboardInterrupt:
                return


def _mesh_logs(service: str | None, follow: bool, tail: int) -> None:
    """Access-log lines of every node's HAProxy, filtered to one service when named."""
    app_name, _, name = (service or "").rpartition("/")

    def wanted(entry: dict[str, Any]) -> bool:
        if not name:
            return True
        # the backend is c_<app>.<service>.<port>
        parts = str(entry.get("service", "")).removeprefix("c_").split(".")
        return len(parts) >= 2 and parts[1] == name and (not app_name or parts[0] == app_name)

    with errors(), client() as c:
        nodes = c.nodes()
        if follow and len(nodes) > 1:
            err_console.print(f"following node {nodes[0]['name']} only")
            nodes = nodes[:1]
        try:
            for n in nodes:
                buf = b""
                for chunk in c.mesh_logs(n["id"], tail=tail * 20 if name else tail, follow=follow):
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        try:
                            entry = json.loads(line)
                        except ValueError:
                            continue  # HAProxy's own notices
                        if isinstance(entry, dict) and wanted(entry):  # "\/" -> "/"
                            click.echo(json.dumps(entry, separators=(",", ":"), ensure_ascii=False))
        except KeyboardInterrupt:
            return


# ---------------------------------------------------------------------------- changes
@cli.command()
@click.argument("service")
@click.argument("replicas", type=click.IntRange(0, 1000))
def scale(service: str, replicas: int) -> None:
    """Set the number of replicas of SERVICE."""
    with errors(), client() as c:
        c.scale(service, replicas)
        console.print(f"{service}: scaled to {replicas}")


@cli.command()
@click.argument("service", required=False)
def stop(service: str | None) -> None:
    """Stop SERVICE, or every workload; `apply` or `scale` starts them again."""
    with errors(), client() as c:
        stopped = c.stop(service)["stopped"]
        console.print("stopped: " + (", ".join(stopped) or "nothing"))


@cli.command()
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


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def version(as_json: bool) -> None:
    """Print the version."""
    if as_json:
        print_json({"version": __version__, "python": sys.version.split()[0]})
    else:
        click.echo(f"elastin {__version__}")


@cli.command()
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


def main() -> None:
    # `kill -USR1 <pid>` prints every thread's stack to stderr: for diagnosing a stuck process
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
