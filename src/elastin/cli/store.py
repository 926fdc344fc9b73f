"""``elastin store check``: is the state database whole? Without a server, beside a running one.

It runs SQLite's ``PRAGMA integrity_check`` on ``<data dir>/state.db`` (or ``--file``)
through a read-only connection (``elastin.store.check_file``): nothing is written, so it
is safe while a server uses the file. It prints what it found and what to do; exit 0 when the
file is whole, 1 when it is not (or missing).
"""

from __future__ import annotations

import click
from rich.text import Text

from elastin.cli.common import EXIT_FAILED, console, err_console, fail
from elastin.client.discovery import default_data_dir
from elastin.store import check_file
from elastin.store.base import damage_advice


@click.group()
def store() -> None:
    """The state database (SQLite, in the data directory)."""


@store.command()
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False),
    default="",
    help="the state file to check (default: state.db in the data directory)",
)
def check(path: str) -> None:
    """Check the state database for damage (read-only: safe while a server runs).

    Exit 0 when it is whole, 1 when it is damaged or missing.
    """
    target = path or str(default_data_dir() / "state.db")
    report = check_file(target)
    if report.ok:
        console.print(
            Text(f"✓ {report.path} is whole", style="bold green")
            + Text(f" (revision {report.revision}, {report.keys} keys)")
        )
        return
    if len(report.problems) == 1 and report.problems[0].endswith("does not exist"):
        fail(
            f"there is no state database at {report.path}",
            "a server creates it when it starts; pass --file or set ELASTIN_DATA_DIR "
            "to check another one",
        )
    err_console.print(Text(f"✗ {report.path} is damaged:", style="bold red"))
    for problem in report.problems:  # SQLite's may span lines: each one indented
        for line in problem.splitlines():
            err_console.print(Text(f"  {line}"), soft_wrap=True)
    err_console.print(
        Text(
            "What to do: stop the server if one runs (it stops by itself when it finds the "
            f"damage). {damage_advice(report.path)}.",
            style="yellow",
        ),
        soft_wrap=True,
    )
    raise SystemExit(EXIT_FAILED)
