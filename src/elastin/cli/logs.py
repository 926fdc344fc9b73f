"""``elastin logs``: a service's output (stdout or stderr of its instances; ``--since`` and
``--timestamps`` from the times the task driver puts on each line), or with ``--mesh`` the
access log of the requests the mesh carried (one JSON line each, from every node's proxy;
for one service, its last ``--tail`` requests across the nodes in time order, named as the
rest of the CLI names services and instances)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
from rich.text import Text

from elastin.cli.common import EXIT_USAGE, client, console, err_console, errors, fail
from elastin.client.http import Client
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
    help="the mesh's access log (JSON lines), for SERVICE or for all services: by default "
    "its abnormal requests and 1% of the others (see below)",
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
    requests the mesh carried.

    What the mesh logs by default: every abnormal request (a 5xx, a connection failure, a
    retry, a timeout, a request aborted before its answer, a 429, an endpoint slower than
    the service's `mesh.slow`, 1s by default) and 1% of the others (TCP: abnormal
    connections only). To log every request to a service, give it `mesh: {access_log: all}`
    in its spec and apply it again; `{sample: 0.05}` logs 5% of the normal ones, `errors`
    none, `off` nothing (docs/mesh.md)."""
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
        live = current_instances(allocs, info.get("version", 0))
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


def current_instances(allocs: list[dict[str, Any]], version: int) -> list[dict[str, Any]]:
    """Whose output ``logs`` shows: the current version's instances that did not stop (a
    job's runs of this version, complete or failed), one per index, the newest; else the
    newest instance of all. An older version's or a deleted application's runs of the same
    name are history (``elastin ps -a`` names them; ``logs`` takes an id through the API)."""
    newest = sorted(allocs, key=lambda a: a.get("created_at", 0.0), reverse=True)
    chosen: dict[int, dict[str, Any]] = {}
    for a in newest:
        if a.get("spec_version") == version and a["status"] not in ("stopped", "lost"):
            chosen.setdefault(a["index"], a)
    return [chosen[i] for i in sorted(chosen)] or newest[:1]


MESH_SCAN = (20, 200, 2_000, 20_000)  # lines read back per wanted line, at most MAX_TAIL
MAX_TAIL = 100_000  # the most lines one request may ask for (the API's bound)
ACCESS_TIME = "%d/%b/%Y:%H:%M:%S.%f"  # HAProxy's %tr / %t


def wanted_service(service: str | None) -> Callable[[dict[str, Any]], bool]:
    """Whether an access-log entry is a request to ``service`` (``name`` or ``app/name``;
    every entry when None). The log's ``service`` is HAProxy's backend,
    ``c_<app>.<service>.<port>`` (docs/mesh.md)."""
    app_name, _, name = (service or "").rpartition("/")

    def wanted(entry: dict[str, Any]) -> bool:
        if not name:
            return True
        try:
            c = ClusterName.parse(str(entry.get("service", "")).removeprefix("c_"))
        except ValueError:
            return False
        return c.service == name and (not app_name or c.app == app_name)

    return wanted


def entries(data: bytes, wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The access-log entries in ``data`` (JSON lines) that ``wanted`` keeps, in order;
    HAProxy's own notices and partial lines are skipped."""
    out = []
    for line in data.split(b"\n"):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and wanted(entry):
            out.append(entry)
    return out


def entry_time(entry: dict[str, Any]) -> datetime:
    """When the request came (HAProxy's time, milliseconds); the epoch when unreadable."""
    try:
        return datetime.strptime(str(entry.get("time", "")), ACCESS_TIME)
    except ValueError:
        return datetime.min


def merge_by_time(per_node: list[list[dict[str, Any]]], n: int | None) -> list[dict[str, Any]]:
    """Every node's entries (each in its own time order) as one list, oldest first; the
    last ``n`` of them (all with None)."""
    merged = sorted((e for node in per_node for e in node), key=entry_time)  # stable
    return merged if n is None else merged[-n:] if n else []


def readable(entry: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """An access-log entry with the CLI's names in place of HAProxy's: ``service``
    ``app/service`` (and ``port``), ``caller`` the calling instance (``app.web[0]``, from
    the listener ``l_<alloc>.<upstream>``), ``endpoint`` the instance that answered
    (``app.api[1]``, from ``e_<alloc>-<port>``); ``names`` maps allocation ids to names
    (an unknown one is shown by its short id)."""
    out = dict(entry)
    try:
        c = ClusterName.parse(str(entry.get("service", "")).removeprefix("c_"))
        out["service"], out["port"] = f"{c.app}/{c.service}", c.port
    except ValueError:
        pass
    listener = str(out.pop("listener", ""))
    if listener.startswith("l_") and "." in listener:
        alloc = listener[2:].split(".", 1)[0]
        out["caller"] = names.get(alloc, alloc[:8])
    server = str(entry.get("endpoint", ""))
    if server.startswith("e_"):
        alloc = server[2:].rsplit("-", 1)[0]
        out["endpoint"] = names.get(alloc, alloc[:8])
    return out


def _last_matching(
    c: Client, node_id: str, n: int, wanted: Callable[[dict[str, Any]], bool]
) -> tuple[list[dict[str, Any]], int]:
    """The last ``n`` entries of a node's access log that ``wanted`` keeps (fewer when the
    log has fewer), read backwards in growing tails (``MESH_SCAN``, bounded by
    ``MAX_TAIL`` lines); and the tail (lines) that held them."""
    got: list[dict[str, Any]] = []
    lines = 0
    for factor in MESH_SCAN:
        lines = min(MAX_TAIL, max(n, 1) * factor)
        data = b"".join(c.mesh_logs(node_id, tail=lines))
        got = entries(data, wanted)
        if len(got) >= n or data.count(b"\n") < lines or lines == MAX_TAIL:
            break  # enough, or the whole log (or as far back as we read) was read
    return got[-n:] if n else got, lines


def _mesh_logs(service: str | None, follow: bool, tail: int) -> None:
    """Access-log lines of every node's HAProxy, filtered to one service when named: the last
    ``tail`` requests across the nodes, oldest first, then (``follow``) new ones."""
    wanted = wanted_service(service)

    def show(entry: dict[str, Any]) -> None:
        line = json.dumps(readable(entry, names), separators=(",", ":"), ensure_ascii=False)
        click.echo(line)

    with errors(), client() as c:
        nodes = c.nodes()
        names = {a.id: a.name for a in c.allocations(all=True)}
        if follow and len(nodes) > 1:
            err_console.print(f"following node {nodes[0]['name']} only")
            nodes = nodes[:1]
        try:
            per_node, reads = [], []
            for n in nodes:
                if tail:
                    found, lines = _last_matching(c, n["id"], tail, wanted)
                else:  # all of it
                    found = entries(b"".join(c.mesh_logs(n["id"], tail=0)), wanted)
                    lines = 0
                per_node.append(found)
                reads.append((n, lines, len(found)))
            if not follow:
                for entry in merge_by_time(per_node, tail or None):
                    show(entry)
                return
            # one node: the follow repeats the tail just read (and what came since); what
            # was before the last `tail` entries of it is skipped
            n, lines, seen = reads[0]
            skip = seen - tail if tail else 0
            buf = b""
            for chunk in c.mesh_logs(n["id"], tail=(lines or 1) if tail else 0, follow=True):
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for entry in entries(b"\n".join(complete), wanted):
                    if skip > 0:
                        skip -= 1
                    else:
                        show(entry)
        except KeyboardInterrupt:
            return
