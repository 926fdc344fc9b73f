"""What every ``elastin`` command shares: the consoles, the exit codes, ``errors()`` (client,
spec and state store errors become a message and an exit code, never a traceback; so do
those a server's task group gathers), ``client()`` (the server
found here), ``print_json`` and ``read_spec``.

Exit codes (scripts can trust them; docs/cli.md lists them too)::

    0  success
    1  the request failed: invalid spec, unknown service, API error
    2  wrong usage (unknown option, missing argument)
    3  no server could be reached
    4  ``up`` / ``apply --wait``: the application did not settle (a workload failed or timed out)
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.text import Text

from elastin.cli import render
from elastin.client.errors import ApiError, ClientError, ServerUnavailable
from elastin.client.http import Client
from elastin.model.errors import SpecError
from elastin.model.spec import load_spec
from elastin.store.base import StoreCorruptError, StoreError, StoreFullError


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
    directory); ``ServerUnavailable`` when there is none."""
    return connect()


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def read_spec(path: str) -> tuple[str, str, str]:
    """The text, file name and base directory of the spec in ``path``, validated locally
    first (same messages as the server, nothing sent)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}", "check the path of the spec file")
    load_spec(p)
    return text, str(p), str(p.resolve().parent)
