"""Commands that run Elastin's processes in the foreground: ``server``, ``agent`` and the
hidden ``daemon`` (server and agent in one background process, started by ``up --detach`` and
by the SDK through ``elastin.client.local``)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from elastin.cli.common import EXIT_USAGE, err_console, errors, fail
from elastin.client.discovery import default_data_dir, find_server, read_token


@click.command()
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

    check_api_limits()
    cfg = ServerConfig(
        default_data_dir(), host=host, port=port, store_url=store_url, algorithm=algorithm
    )

    async def main() -> None:
        cancel_on_signals()

        async def ready(url: str, _: str) -> None:
            err_console.print(f"elastin server listening on {url} (data in {cfg.data_dir})")

        await run_server(cfg, on_ready=ready)

    run_async(main)


def _loopback_port(flag: str, what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An agent option for a port on 127.0.0.1: 0 picks a free one, -1 turns it off."""
    return click.option(
        flag,
        type=click.IntRange(-1, 65535),
        default=0,
        show_default=True,
        help=f"port on 127.0.0.1 of {what} (0: any free port, -1: off)",
    )


def _metrics_interval(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """``--metrics-interval``: 0 (off) or 0.5 to 60 s (the agent's loop cannot report more
    often than it samples; a report a minute is what the windows still hold)."""
    if value == 0 or 0.5 <= value <= 60:
        return value
    raise click.BadParameter(
        f"{value:g} is not 0 (no reports) or from 0.5 to 60 seconds; "
        "1 (the default) is what `elastin top` and the autoscaler expect"
    )


def read_token_file(path: str) -> str:
    """The token in ``path``; refused when other users may read it or it is empty."""
    try:
        mode = os.stat(path).st_mode
        text = Path(path).read_text().strip()
    except OSError as e:
        fail(f"cannot read the token file {path}: {e.strerror}", "check the path", EXIT_USAGE)
    if mode & 0o077:
        fail(
            f"the token file {path} is readable by other users (mode {mode & 0o777:o})",
            f"chmod 600 {path}",
            EXIT_USAGE,
        )
    if not text:
        fail(f"the token file {path} is empty", "copy the server's token into it", EXIT_USAGE)
    return text


@click.command()
@click.option("--server", "server_url", default="", help="server URL (default: found locally)")
@click.option(
    "--token",
    default="",
    help="API token; every local user sees it in `ps`: prefer --token-file or ELASTIN_TOKEN",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default="",
    help="file holding the API token (readable by its owner only)",
)
@click.option("--name", default="", help="node name (default: the host name)")
@_loopback_port("--metrics-port", "the agent's /metrics; the node's agent.metrics says where")
@_loopback_port(
    "--dns-port",
    "the DNS interface (<service>.service.elastin, UDP and TCP); instances find it in ELASTIN_DNS",
)
@click.option(
    "--metrics-interval",
    type=float,
    callback=_metrics_interval,
    default=1.0,
    show_default=True,
    help="seconds between metrics reports to the server (cpu, memory, request rates, "
    "latency; kept in its memory): 0.5 to 60, or 0 for none",
)
def agent(
    server_url: str,
    token: str,
    token_file: str,
    name: str,
    metrics_port: int,
    dns_port: int,
    metrics_interval: float,
) -> None:
    """Run a node agent in the foreground. Its instances keep running when it stops."""
    from elastin.agent.agent import Agent, AgentConfig
    from elastin.agent.drivers.registry import default_drivers

    check_api_limits()
    if token:
        err_console.print(
            "warning: --token puts the API token on the command line, where every local user "
            "can read it (`ps`); use --token-file FILE (0600) or ELASTIN_TOKEN instead",
            style="yellow",
        )
    if token_file:
        token = read_token_file(token_file)

    if server_url:
        url = server_url
        token = (
            token or os.environ.get("ELASTIN_TOKEN", "") or (read_token(default_data_dir()) or "")
        )
        if not token:
            fail(
                "no API token",
                "pass --token-file, set ELASTIN_TOKEN, or copy the server's token "
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
        metrics_interval=metrics_interval,
    )
    if name:
        cfg.name = name

    async def main() -> None:
        cancel_on_signals()
        err_console.print(f"elastin agent for {cfg.server_url} (data in {cfg.data_dir})")
        await Agent(cfg, default_drivers()).run()

    run_async(main)


def check_api_limits() -> None:
    """The ``ELASTIN_API_*`` settings, read before anything starts: a bad one is a usage
    error that names it, not a traceback from inside the server."""
    from elastin.serving import Limits

    try:
        Limits.from_env()
    except ValueError as e:
        fail(str(e), 'docs/api.md, "Limits and timeouts", lists them', EXIT_USAGE)


def cancel_on_signals() -> None:
    """SIGINT and SIGTERM cancel the running task (the command's main): it stops cleanly."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)


def run_async(main: Callable[[], Any]) -> None:
    """Run ``main``; a stop (signal, Ctrl-C) exits 0, a failure exits non-zero with a line
    that says so (the traceback is in the log above it)."""
    from elastin.agent.agent import AgentFailed

    try:
        with errors():  # a damaged or full state store: one message, no traceback
            asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except OSError as e:
        if e.errno == errno.ENOSPC:
            fail(
                f"the disk is full: {e.filename or 'a write'} could not be made",
                "free space on the data directory's file system and start again",
            )
        if e.filename:
            fail(f"{e.strerror or e}: {e.filename}", "check that path and its permissions")
        fail(str(e.strerror or e))
    except AgentFailed as e:
        fail(
            f"the agent stopped on an internal error: {e}",
            "its log (above) has the traceback; instances keep running and the next agent "
            "re-attaches to them: please report it",
        )
    except Exception as e:
        logging.getLogger("elastin").critical("stopped on an internal error", exc_info=e)
        fail(
            f"stopped on an internal error: {type(e).__name__}: {e}",
            "the traceback is in the log above: please report it",
        )


@click.command(hidden=True)
@click.option("--port", default=4850)
@click.option("--stop-workloads", is_flag=True, help="stop instances when the daemon stops")
def daemon(port: int, stop_workloads: bool) -> None:
    """Server and agent in one background process (started by `up --detach`)."""
    check_api_limits()
    from elastin.cli.embedded import run_embedded

    async def idle(url: str, token: str, agent: Any, shutdown: asyncio.Event) -> None:
        await shutdown.wait()

    async def main() -> None:
        await run_embedded(default_data_dir(), port=port, main=idle, stop_workloads=stop_workloads)

    run_async(main)
