"""``elastin exec INSTANCE -- COMMAND...``: run a command inside a running instance.

The command (an argv, never a shell string) runs as the instance's exec health checks do:
in its mount namespace and cgroups, as its user, with its environment, in its working
directory. The server relays the request to the agent of the instance's node
(``POST /v1/allocations/{id}/exec``, docs/api.md), which streams what the command writes; this
prints its stdout and stderr as they come and exits with its exit code (128 + N when killed
by signal N, 124 when it ran past ``--timeout`` and was killed, as ``timeout(1)``).

``resolve`` (pure) finds the instance from what ``elastin ps`` shows: ``app.workload[i]``,
``workload[i]``, ``workload`` when it has one instance, an allocation id or its 8-character
short id. In two steps: ``candidates`` (the running instances the reference names) and
``choose``: during a rolling update the old and the new ``shop.api[0]`` both run (and a
short id may match two allocations); then the one running its service's current version
(``GET /v1/services``' ``version``) is taken when exactly one does, and the CLI says which
(one line on stderr); otherwise the command is refused, listing their short ids and
versions.
"""

from __future__ import annotations

import base64
import contextlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import click

from elastin.cli.common import EXIT_FAILED, client, err_console, errors, fail
from elastin.model.cluster import Allocation

EXIT_TIMED_OUT = 124  # as timeout(1)
ALLOC_ID = re.compile(r"[0-9a-f]{8,32}")
NAME = re.compile(r"(?:(?P<app>[a-z0-9-]+)\.)?(?P<workload>[a-z0-9-]+)(?:\[(?P<index>\d{1,6})\])?")


class Unresolved(Exception):
    """``resolve`` found no single running instance; ``message`` and ``hint`` say why."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def resolve(
    ref: str, allocs: Sequence[Allocation], current: Mapping[str, int] | None = None
) -> Allocation:
    """The running instance ``ref`` names among ``allocs`` (``Unresolved`` otherwise);
    ``current``: each service's current version by ``Allocation.key`` (see ``choose``)."""
    return choose(ref, candidates(ref, allocs), current or {})[0]


def candidates(ref: str, allocs: Sequence[Allocation]) -> list[Allocation]:
    """The running instances ``ref`` names among ``allocs``: one name (more than one
    allocation during a rolling update), or one id; ``Unresolved`` when it names none that
    runs, or several names."""
    if ALLOC_ID.fullmatch(ref):
        by_id = [a for a in allocs if a.id == ref or a.short_id == ref]
        if by_id:
            return _running(ref, by_id)
    m = NAME.fullmatch(ref)
    if m is None:
        raise Unresolved(
            f"not an instance: {ref!r}",
            "name it as `elastin ps` shows it: app.workload[0], workload[0], workload "
            "(one instance) or its allocation id",
        )
    app, workload, index = m["app"], m["workload"], m["index"]
    found = [
        a
        for a in allocs
        if a.workload == workload
        and (app is None or a.app == app)
        and (index is None or a.index == int(index))
    ]
    if not found:
        raise Unresolved(f"no instance {ref!r}", "see `elastin ps` for the instances")
    running = [a for a in found if a.status == "running"]
    names = sorted({a.name for a in running})
    if len(names) > 1:
        raise Unresolved(
            f"{ref!r} names {len(names)} running instances: {', '.join(names)}",
            f"name one of them, e.g. `elastin exec {names[0]} -- ...`",
        )
    return _running(ref, running or found)


def choose(
    ref: str, running: Sequence[Allocation], current: Mapping[str, int]
) -> tuple[Allocation, str]:
    """One of the running instances ``candidates`` found, and what to tell the user about
    the choice ("" when there was none to make): when several run (a rolling update runs
    the old and the new ``shop.api[0]``), the one whose ``spec_version`` is its service's
    current version (``current``, by ``Allocation.key``) if exactly one is; otherwise
    ``Unresolved`` listing their short ids and versions."""
    if len(running) == 1:
        return running[0], ""
    now = [a for a in running if current.get(a.key) == a.spec_version]
    # a short id two allocations share names neither: then their whole ids
    unique = len({a.short_id for a in running}) == len(running)

    def ident(a: Allocation) -> str:
        return a.short_id if unique else a.id

    if len(now) != 1:
        listed = ", ".join(f"{a.name} {ident(a)} (version {a.spec_version})" for a in running)
        raise Unresolved(
            f"{ref!r} names {len(running)} running instances and not exactly one of them "
            f"runs its service's current version: {listed}",
            f"name one by its {'short ' if unique else ''}id, e.g. "
            f"`elastin exec {ident(running[0])} -- ...`",
        )
    a = now[0]
    others = ", ".join(f"{ident(b)} (version {b.spec_version})" for b in running if b is not a)
    return a, (
        f"{ref!r} names {len(running)} running instances: running in {a.name} {ident(a)}, "
        f"of the current version {a.spec_version} (not in {others})"
    )


def _running(ref: str, found: Sequence[Allocation]) -> list[Allocation]:
    running = [a for a in found if a.status == "running"]
    if running:
        return running
    a = found[-1]
    raise Unresolved(
        f"{a.label} is {a.status}, not running: nothing to run a command in",
        "see `elastin ps -a` (and `elastin logs` for why it is not running)",
    )


def current_versions(services: Any) -> dict[str, int]:
    """Each service's current version by ``Allocation.key`` (``app/name``), from what
    ``GET /v1/services`` answers."""
    out: dict[str, int] = {}
    for s in services if isinstance(services, list) else []:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            out[f"{s['app']}/{s['name']}"] = int(s["version"])
    return out


@click.command(name="exec", context_settings={"allow_interspersed_args": False})
@click.argument("instance")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, 3600, min_open=True),
    help="seconds before the command is killed (exit 124)",
)
def exec_(instance: str, command: tuple[str, ...], timeout: float) -> None:
    """Run COMMAND inside a running INSTANCE (its files, cgroups, user, environment and
    workdir) and exit with its exit code.

    INSTANCE is what `elastin ps` shows: app.workload[0], workload[0], workload (when it has
    one instance), or an allocation id or its short id. When it names two running instances
    (a rolling update runs the old and the new shop.api[0]), the one of the service's current
    version is taken and stderr says so; otherwise name one by its short id. Put `--` before
    COMMAND:
    `elastin exec shop.api[0] -- ls -l`. COMMAND is run as given, without a shell
    (`-- sh -c 'echo $HOME'` for one)."""
    if command[:1] == ("--",):  # after INSTANCE click passes the "--" on
        command = command[1:]
    if not command:
        fail("name the COMMAND to run after `--`", "e.g. `elastin exec shop.api[0] -- ls -l`", 2)
    code = EXIT_FAILED
    with errors(), client() as c:
        try:
            running = candidates(instance, c.allocations())
            versions = current_versions(c.services()) if len(running) > 1 else {}
            alloc, note = choose(instance, running, versions)
        except Unresolved as e:
            fail(e.message, e.hint)
        if note:
            err_console.print(f"elastin: {note}", markup=False, highlight=False, soft_wrap=True)
        end = None
        try:
            for frame in c.exec(alloc.id, list(command), timeout):
                if "stream" in frame:
                    out = sys.stdout if frame["stream"] == "stdout" else sys.stderr
                    out.buffer.write(base64.b64decode(frame.get("data", "")))
                    out.flush()
                else:
                    end = frame
        except KeyboardInterrupt:  # closing the stream ends the command on its node
            sys.exit(130)
        if end is None:
            fail(
                f"the connection ended before the command in {alloc.label} did",
                "its node's agent may have stopped; see `elastin nodes`",
            )
        if end.get("timed_out"):
            err_console.print(
                f"elastin: the command ran past its timeout ({timeout:g} s) and was killed; "
                "give it more time with --timeout"
            )
            code = EXIT_TIMED_OUT
        elif end.get("signal"):
            code = 128 + int(end["signal"])
        else:
            code = int(end.get("exit_code") or 0)
    sys.exit(code)
