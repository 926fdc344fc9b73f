"""``elastin exec INSTANCE -- COMMAND...``: run a command inside a running instance.

The command (an argv, never a shell string) runs as the instance's exec health checks do:
in its mount namespace and cgroups, as its user, with its environment, in its working
directory. The server relays the request to the agent of the instance's node
(``POST /v1/allocations/{id}/exec``, docs/api.md), which streams what the command writes; this
prints its stdout and stderr as they come and exits with its exit code (128 + N when killed
by signal N, 124 when it ran past ``--timeout`` and was killed, as ``timeout(1)``).

``resolve`` (pure) finds the instance from what ``elastin ps`` shows: ``app.workload[i]``,
``workload[i]``, ``workload`` when it has one instance, an allocation id or its 8-character
short id.
"""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Sequence

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


def resolve(ref: str, allocs: Sequence[Allocation]) -> Allocation:
    """The running instance ``ref`` names among ``allocs`` (``Unresolved`` otherwise)."""
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


def _running(ref: str, found: Sequence[Allocation]) -> Allocation:
    running = [a for a in found if a.status == "running"]
    if running:
        return running[-1]
    a = found[-1]
    raise Unresolved(
        f"{a.label} is {a.status}, not running: nothing to run a command in",
        "see `elastin ps -a` (and `elastin logs` for why it is not running)",
    )


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
    one instance), or an allocation id or its short id. Put `--` before COMMAND:
    `elastin exec shop.api[0] -- ls -l`. COMMAND is run as given, without a shell
    (`-- sh -c 'echo $HOME'` for one)."""
    if command[:1] == ("--",):  # after INSTANCE click passes the "--" on
        command = command[1:]
    if not command:
        fail("name the COMMAND to run after `--`", "e.g. `elastin exec shop.api[0] -- ls -l`", 2)
    code = EXIT_FAILED
    with errors(), client() as c:
        try:
            alloc = resolve(instance, c.allocations())
        except Unresolved as e:
            fail(e.message, e.hint)
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
