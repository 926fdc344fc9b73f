"""Commands for a workload's versions: ``rollout status | history | undo | promote``,
``restart`` (a service's instances replaced one by one, with the update policy's health
gates) and ``job run`` (a finished job runs again).

Every change here makes or restores a version through the server (``server/apps.py``); the
rolling update itself is the scheduler's (``docs/spec.md``, *update*). ``--wait`` waits as
``apply --wait`` does and exits 4 when the version failed (rolled back or not).
"""

from __future__ import annotations

import time
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from elastin.cli.common import EXIT_UNSETTLED, client, console, errors, fail, print_json
from elastin.cli.deploy import wait_settled
from elastin.client.http import Client

STATE_STYLE = {"stable": "green", "rolling": "yellow", "failed": "red", "superseded": "dim"}


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def _settle(c: Client, res: dict[str, Any], ref: str, wait: bool, timeout: float) -> None:
    app = res["app"]
    if wait and not wait_settled(c, app, timeout, generation=res.get("generation", 0)):
        fail(
            f"application {app!r} did not settle",
            f"see `elastin rollout status {ref}`",
            EXIT_UNSETTLED,
        )


def describe(r: dict[str, Any]) -> Text:
    """One line saying where a rollout stands."""
    ref = f"{r['app']}/{r['workload']}"
    state = r["state"]
    text = Text(f"{ref}: version {r['version']} ", style="bold")
    text.append(state, style=STATE_STYLE.get(state, ""))
    if r["type"] == "service":
        new = "new " if state == "rolling" else ""
        text.append(f" — {r['ready']}/{r['desired']} {new}instance(s) ready")
        if r["old"]:
            text.append(f", {r['old']} of an older version still running")
        if r["waiting_promotion"]:
            text.append(f"; canaries wait: elastin rollout promote {ref}", style="yellow")
        if r["stop_first"]:
            text.append(" (a fixed port: replaced stop-first, one at a time)", style="dim")
    if r["message"]:
        text.append(f"\n  {r['message']}", style="red" if state == "failed" else "")
    return text


@click.group()
def rollout() -> None:
    """A workload's versions: where the current rollout stands, the versions kept, going
    back to one, promoting canaries."""


@rollout.command("status")
@click.argument("ref", metavar="NAME")
@click.option("--json", "as_json", is_flag=True, help="print the answer as JSON")
def status(ref: str, as_json: bool) -> None:
    """Where the rollout of service or job NAME (`name` or `app/name`) stands."""
    with errors(), client() as c:
        r = c.rollout(ref)
        if as_json:
            print_json(r)
            return
        console.print(describe(r))


@rollout.command("history")
@click.argument("ref", metavar="NAME")
@click.option("--json", "as_json", is_flag=True, help="print the versions as JSON")
def history(ref: str, as_json: bool) -> None:
    """The versions of NAME kept (the last 10), newest last."""
    with errors(), client() as c:
        r = c.rollout(ref)
        if as_json:
            print_json(r["history"])
            return
        t = Table(box=None, pad_edge=False)
        for col in ("VERSION", "CAUSE", "STATE", "CREATED", "COMMAND", "MESSAGE"):
            t.add_column(col)
        for h in r["history"]:
            mark = "*" if h["current"] else ""
            t.add_row(
                f"{h['version']}{mark}",
                h["cause"],
                Text(h["state"], style=STATE_STYLE.get(h["state"], "")),
                _when(h["created_at"]),
                " ".join(h["command"]) or h["image"],
                h["message"]
                + (f" (rolled back to {h['reverted_to']})" if h["reverted_to"] else ""),
            )
        console.print(t)
        console.print(Text("* the current version", style="dim"))


@rollout.command("undo")
@click.argument("ref", metavar="NAME")
@click.option("--to", "to", type=click.IntRange(min=1), help="the version to go back to")
@click.option("--wait/--no-wait", default=False, help="wait until it settles")
@click.option("--timeout", default=300.0, show_default=True)
def undo(ref: str, to: int | None, wait: bool, timeout: float) -> None:
    """Go back to the previous version of NAME (or version N with --to N)."""
    with errors(), client() as c:
        res = c.rollout_undo(ref, to or 0)
        console.print(describe(c.rollout(ref)))
        _settle(c, res, ref, wait, timeout)


@rollout.command("promote")
@click.argument("ref", metavar="NAME")
@click.option("--wait/--no-wait", default=False, help="wait until the rollout settles")
@click.option("--timeout", default=300.0, show_default=True)
def promote(ref: str, wait: bool, timeout: float) -> None:
    """Let the rollout of NAME go on past its canaries."""
    with errors(), client() as c:
        res = c.rollout_promote(ref)
        console.print(f"{ref}: promoted; the rollout goes on")
        _settle(c, res, ref, wait, timeout)


@click.command()
@click.argument("ref", metavar="SERVICE")
@click.option("--wait/--no-wait", default=False, help="wait until every instance is replaced")
@click.option("--timeout", default=300.0, show_default=True)
def restart(ref: str, wait: bool, timeout: float) -> None:
    """Replace SERVICE's instances one by one (a new version, same spec), with the health
    gates of its update policy; a version that does not become healthy is rolled back."""
    with errors(), client() as c:
        res = c.restart(ref)
        console.print(describe(c.rollout(ref)))
        _settle(c, res, ref, wait, timeout)


@click.group()
def job() -> None:
    """Jobs: run one again."""


@job.command("run")
@click.argument("ref", metavar="JOB")
@click.option("--wait/--no-wait", default=False, help="wait until the run finishes")
@click.option("--timeout", default=300.0, show_default=True)
def run(ref: str, wait: bool, timeout: float) -> None:
    """Run JOB again: a new run with its own allocations, events and logs."""
    with errors(), client() as c:
        res = c.job_run(ref)
        r = c.rollout(ref)
        console.print(f"{r['app']}/{r['workload']}: run {r['version']} started")
        _settle(c, res, ref, wait, timeout)
