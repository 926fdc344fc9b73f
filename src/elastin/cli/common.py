"""What every ``elastin`` command shares: the consoles (which survive their reader going
away: ``silence``, ``on_output_closed``, ``check_outputs``), the exit codes, ``errors()``
(client, spec and state store errors become a message and an exit code, never a traceback; so
do those a server's task group gathers), ``client()`` (the server found here; when none runs
it says whether instances Elastin started still run: ``left_running``), ``print_json`` and
``read_spec``.

Exit codes (scripts can trust them; docs/cli.md lists them too)::

    0  success
    1  the request failed: invalid spec, unknown service, API error
    2  wrong usage (unknown option, missing argument)
    3  no server could be reached
    4  ``up`` / ``apply --wait``: the application did not settle (a workload failed or timed out)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.text import Text

from elastin.cli import render
from elastin.client.discovery import default_data_dir
from elastin.client.errors import ApiError, ClientError, ServerUnavailable
from elastin.client.http import Client
from elastin.model.errors import SpecError, SpecIssue
from elastin.model.spec import parse_spec
from elastin.model.workload import Application
from elastin.store.base import StoreCorruptError, StoreError, StoreFullError

_closed_hooks: list[Callable[[], None]] = []


class _Console(Console):
    """A console whose reader may go away (``elastin up | tee log`` and Ctrl-C, a closed
    terminal): the write that finds its pipe closed silences it (``silence``) instead of
    rich's default, an exit from whatever thread was printing."""

    def on_broken_pipe(self) -> None:
        silence(self)


def _console(stderr: bool = False) -> Console:
    c = _Console(stderr=stderr)
    if not c.is_terminal:
        c.width = max(c.width, 160)  # logs and pipes: do not squeeze the tables
    return c


console = _console()
err_console = _console(stderr=True)


def _fileno(c: Console) -> int | None:
    try:
        return c.file.fileno()
    except (AttributeError, OSError, ValueError):  # a test's buffer has none
        return None


def silence(c: Console) -> None:
    """Stop printing to ``c`` for good: it goes quiet, and its descriptor writes to
    /dev/null from now on, so that nothing else writing there (a log line, the interpreter's
    last flush) fails either. The first time, every ``on_output_closed`` hook is called."""
    if c.quiet:
        return
    c.quiet = True
    fd = _fileno(c)
    if fd is not None:
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
    for hook in list(_closed_hooks):
        hook()


def on_output_closed(hook: Callable[[], None]) -> Callable[[], None]:
    """Call ``hook`` (from any thread) when stdout or stderr is found closed; returns what
    removes it again."""
    _closed_hooks.append(hook)

    def forget() -> None:
        with contextlib.suppress(ValueError):
            _closed_hooks.remove(hook)

    return forget


def output_closed(c: Console) -> bool:
    """Whether nothing reads ``c`` any more: its pipe's reader went away, or its terminal
    hung up (asked without writing)."""
    fd = _fileno(c)
    if fd is None or c.quiet:
        return False
    poll = select.poll()
    poll.register(fd, 0)
    try:
        found = poll.poll(0)
    except OSError:
        return False
    return any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in found)


def check_outputs() -> bool:
    """Silence stdout's and stderr's consoles when nothing reads them any more (see
    ``silence``); whether one was."""
    closed = False
    for c in (console, err_console):
        if output_closed(c):
            silence(c)
            closed = True
    return closed


EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_UNSETTLED = 1, 2, 3, 4


def fail(message: str, hint: str = "", code: int = EXIT_FAILED) -> NoReturn:
    render.print_error(err_console, message, hint)
    sys.exit(code)


def fail_store(e: StoreError) -> NoReturn:
    """A state store error as one message (its text says what is wrong, where, what to do)."""
    if isinstance(e, StoreCorruptError):
        fail(f"the state database {e.path} is damaged ({e.problem})", e.hint)
    if isinstance(e, StoreFullError):
        fail(
            f"the data directory's disk is full: {e.path} cannot be written",
            f"free space on {e.filesystem}",
        )
    fail(str(e))


@contextmanager
def errors() -> Iterator[None]:
    """Turn client errors into a message and an exit code; no traceback is a UI."""
    try:
        yield
    except StoreError as e:
        fail_store(e)
    except ExceptionGroup as group:  # a server's task group: its store broke
        store, rest = group.split(StoreError)
        if store is None:
            raise
        if rest is not None:  # said too, not lost behind the store's message
            logging.getLogger("elastin").error("also failed:", exc_info=rest)
        first: BaseException = store
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        assert isinstance(first, StoreError)
        fail_store(first)
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


connect: Callable[[], Client] = Client.discover
"""How ``client()`` finds its server (tests point it at a fake transport)."""


def client() -> Client:
    """A client of the server found here (``ELASTIN_ADDR`` / ``ELASTIN_TOKEN`` or the data
    directory); ``ServerUnavailable`` when there is none, which says so when instances
    Elastin started still run without it (``left_running``), or when the state of one is
    there."""
    try:
        return connect()
    except ServerUnavailable as e:
        data_dir = default_data_dir()
        left = left_running(data_dir)
        if left:
            raise ServerUnavailable(left_running_message(left), left_running_hint(left)) from None
        state = data_dir / "state.db"
        if e.message.startswith("no Elastin server is running") and state.exists():
            raise ServerUnavailable(
                f"no Elastin server is running (its state is in {state}; no instance it "
                "started still runs)",
                "`elastin up FILE` or `elastin server` starts one with that state",
            ) from None
        raise


@dataclass(frozen=True)
class LeftRunning:
    """An instance Elastin started whose supervisor still runs (from its agent's handle)."""

    alloc_id: str
    name: str
    pid: int


def left_running_hint(left: list[LeftRunning]) -> str:
    them = "them" if len(left) > 1 else "it"
    return f"`elastin down` stops {them}; `elastin up FILE` re-attaches to {them}"


def left_running(data_dir: Path) -> list[LeftRunning]:
    """The instances whose agent handle is in ``data_dir`` and whose process still runs:
    with no server running here, what a killed ``elastin up`` (or server and agent) left."""
    from elastin.agent.drivers.base import supervisor_alive
    from elastin.agent.runner import AllocRunner

    out = []
    for path in sorted((data_dir / "agent" / "handles").glob("*.json")):
        loaded = AllocRunner.load_handle(path)
        if loaded is not None and supervisor_alive(loaded[0]):
            handle, alloc = loaded[0], loaded[1]
            out.append(LeftRunning(alloc.id, alloc.name, handle.pid))
    return out


def left_running_message(left: list[LeftRunning]) -> str:
    n = len(left)
    pids = ", ".join(str(x.pid) for x in left)
    return (
        f"no Elastin server is running, but {n} instance{'s' if n > 1 else ''} started by "
        f"Elastin still run{'s' if n == 1 else ''} (pid{'s' if n > 1 else ''} {pids})"
    )


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@dataclass(frozen=True)
class SpecFile:
    """A spec file read and validated: what ``Client.apply`` sends, and the application."""

    text: str
    file: str
    base_dir: str
    app: Application


def read_spec(path: str) -> SpecFile:
    """The spec in ``path``, validated locally first (same messages as the server and as
    ``elastin validate``, nothing sent): ``SpecError`` when it is not valid (a binary file
    too), a message and exit 1 when it cannot be read."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}", "check the path of the spec file")
    except UnicodeDecodeError as e:
        why = f"the file is not UTF-8 text (byte {e.start}: 0x{e.object[e.start]:02x})"
        hint = "give the path of a YAML spec file"
        raise SpecError([SpecIssue("", why, hint, str(p))]) from None
    base = str(p.resolve().parent)
    app = parse_spec(text, file=str(p), base_dir=base)
    return SpecFile(text, str(p), base, app)
