"""Starting a local server in the background: ``elastin daemon`` (server and agent in one
process) as a child in its own session, for ``elastin up --detach`` and for the SDK when no
server runs.

``start_daemon`` returns once the child's server answers, that is once the data directory's
``server.json`` names the child (the server writes it when its API listens); it raises
``DaemonFailed`` when the child exits first, and ``ServerUnavailable`` (after stopping it)
when it does not answer in time. ``stop_daemon`` ends a child it started (SIGTERM, then SIGKILL).

The only place that starts one; the rest of ``client`` talks HTTP to a server found by
``discovery``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from elastin.client.discovery import running_server
from elastin.client.errors import DaemonFailed, ServerUnavailable

START_TIMEOUT = 30.0  # seconds for the daemon's API to listen
POLL = 0.1  # seconds between looks at server.json while it starts
STOP_TIMEOUT = 15.0  # seconds after SIGTERM before SIGKILL


def start_daemon(
    data_dir: Path,
    *,
    port: int,
    log_path: Path,
    stop_workloads: bool = False,
    timeout: float = START_TIMEOUT,
) -> subprocess.Popen[bytes]:
    """Start ``elastin daemon --port PORT`` with its output appended to ``log_path`` and wait
    until it serves the API (``port`` 0: any free port). With ``stop_workloads`` the daemon
    stops its instances when it stops."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # root's alone (elastin.datadir)
    args = [sys.executable, "-m", "elastin.cli.main", "daemon", "--port", str(port)]
    if stop_workloads:
        args.append("--stop-workloads")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while True:
        found = running_server(data_dir)
        if found and found[1] == proc.pid:
            return proc
        if proc.poll() is not None:
            raise DaemonFailed(
                f"the background server exited ({proc.returncode})", f"see {log_path}"
            )
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    stop_daemon(proc)
    raise ServerUnavailable(
        f"the background server (pid {proc.pid}) did not answer within {timeout:g} s",
        f"see {log_path}",
    )


def stop_daemon(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """End a daemon ``start_daemon`` started: SIGTERM, then SIGKILL after ``timeout`` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
