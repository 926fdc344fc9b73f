"""``elastin logs``: a service's output (stdout or stderr of its instances), or with ``--mesh``
the access log of the requests the mesh carried (one JSON line each, from every node's
proxy)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.text import Text

from elastin.cli.common import EXIT_USAGE, client, console, err_console, errors, fail
from elastin.mesh.model.names import ClusterName


@click.command()
@click.argument("service", required=False)
@click.option("--follow", "-f", is_flag=True)
@click.option("--stderr", is_flag=True, help="show stderr instead of stdout")
@click.option(
    "--tail",
    default=100,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="lines to show first (0: all)",
)
@click.option("--index", "-i", default=None, type=int, help="instance index (default: all)")
@click.option(
    "--since",
    default="",
    metavar="TIME",
    help="only lines from TIME on: 2024-05-01T12:00:00Z, or a duration back from now "
    "(90s, 10m, 1h30m)",
)
@click.option("--timestamps", "-t", is_flag=True, help="show each line's time before it")
@click.option(
    "--mesh",
    is_flag=True,
    help="the mesh's access log (JSON lines), for SERVICE or for all services",
)
def logs(
    service: str | None,
    follow: bool,
    stderr: bool,
    tail: int,
    index: int | None,
    since: str,
    timestamps: bool,
    mesh: bool,
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
                chunks = c.logs(
                    a["id"],
                    stream=stream,
                    tail=tail,
                    follow=follow,
                    since=since,
                    timestamps=timestamps,
                )
                for chunk in chunks:
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
        # the log's "service" is the proxy's backend, c_<app>.<service>.<port> (docs/mesh.md)
        try:
            c = ClusterName.parse(str(entry.get("service", "")).removeprefix("c_"))
        except ValueError:
            return False
        return c.service == name and (not app_name or c.app == app_name)

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
