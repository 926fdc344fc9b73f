"""The ``elastin`` command: one command, a subcommand per noun or verb.

Presentation only: every subcommand is a few API calls through ``elastin.client`` and a table.
This module holds the command group and the entry point (``main``: usage errors exit 2,
Ctrl-C 130); the commands live in modules named for what they do:

    servers   server, agent, daemon              run Elastin's processes in the foreground
    deploy    up, down, apply, diff, validate,   change what runs; the wait until settled
              scale, stop
    rollout   rollout (status, history, undo,    a workload's versions
              promote), restart, job run
    views     ps, top, endpoints, traffic,       read and show
              nodes, events, resources,
              status, version
    logs      logs (--mesh)                      instances' output, the mesh's access log
    recommend recommend                          vertical recommendations vs request and use
    store     store check                        is the state database whole
    common    consoles, exit codes, errors(), client(), print_json, read_spec
    render    the tables
    embedded  server and agent in one process (up in the foreground, daemon)

Exit codes (scripts can trust them):
    0  success
    1  the request failed: invalid spec, unknown service, API error
    2  wrong usage (unknown option, missing argument)
    3  no server could be reached
    4  ``up`` / ``apply --wait``: the application did not settle (a workload failed or timed out)
"""

from __future__ import annotations

import faulthandler
import signal
import sys

import click

from elastin import __version__
from elastin.cli import deploy, exec, logs, recommend, rollout, servers, store, views
from elastin.cli.common import (
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_UNSETTLED,
    EXIT_USAGE,
    errors,
    fail,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_UNAVAILABLE",
    "EXIT_UNSETTLED",
    "EXIT_USAGE",
    "cli",
    "errors",
    "fail",
    "main",
]


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


for command in (
    servers.server,
    servers.agent,
    servers.daemon,
    deploy.up,
    deploy.down,
    deploy.apply,
    deploy.diff,
    deploy.validate,
    deploy.scale,
    deploy.stop,
    rollout.rollout,
    rollout.restart,
    rollout.job,
    views.ps,
    views.top,
    views.endpoints,
    views.traffic,
    views.nodes,
    views.events,
    views.resources,
    recommend.recommend,
    views.status,
    views.version,
    logs.logs,
    exec.exec_,
    store.store,
):
    cli.add_command(command)


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
