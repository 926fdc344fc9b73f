"""A real foreground `elastin up` leaves nothing running behind it, whatever happens to it
or its terminal: a closed output pipe (`elastin up | tee log` and Ctrl-C), SIGINT, SIGTERM,
SIGHUP. And when instances outlive it (`kill -9`), `ps` says so and `down` stops them.
Also `up --detach` whose application does not settle: the server keeps running, says so,
and `down` stops it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

SPEC = """app: tiny
services:
  napper:
    command: ["sleep", "600"]
    resources: {cpu: 50m, memory: 16Mi}
    replicas: 2
"""
READY = "Ctrl-C stops the application and the server."


def instance_procs(cgroup_root: str) -> set[int]:
    """Every process in the harness's cgroups (any controller), that is every instance's
    supervisor and program."""
    pids: set[int] = set()
    for top in Path("/sys/fs/cgroup").glob(f"*/{cgroup_root}"):
        for procs in top.rglob("cgroup.procs"):
            pids |= {int(p) for p in procs.read_text().split()}
    unified = Path("/sys/fs/cgroup") / cgroup_root
    if unified.is_dir():
        for procs in unified.rglob("cgroup.procs"):
            pids |= {int(p) for p in procs.read_text().split()}
    return {p for p in pids if Path(f"/proc/{p}").exists()}


def left_running(data_dir: Path) -> list[int]:
    """The pids of the instance handles in ``data_dir`` whose process still runs."""
    pids = []
    for path in sorted((data_dir / "agent" / "handles").glob("*.json")):
        pid = int(json.loads(path.read_text())["handle"]["pid"])
        if Path(f"/proc/{pid}").exists() and not _zombie(pid):
            pids.append(pid)
    return pids


def start_up(harness: Any, out: IO[bytes] | int) -> subprocess.Popen[bytes]:
    spec = harness.write_spec("tiny.yaml", SPEC)
    return subprocess.Popen(
        [sys.executable, "-m", "elastin.cli.main", "up", str(spec), "--port", "0"],
        env=harness.env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a signal to the test's group does not reach it
    )


def wait_running(harness: Any, proc: subprocess.Popen[bytes], output: Any) -> set[int]:
    """Wait until `up` says everything runs; the instances' processes then."""
    harness.wait_for(lambda: READY in output() or proc.poll() is not None, 120, "up ready")
    assert proc.poll() is None, output()
    pids = instance_procs(harness.cgroup_root)
    assert len(pids) >= 2, pids  # the two supervisors at least
    return pids


def assert_nothing_left(harness: Any, pids: set[int]) -> None:
    alive = {p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)}
    assert alive == set(), alive
    assert instance_procs(harness.cgroup_root) == set()
    assert left_running(harness.data_dir) == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_up_stops_everything_on_a_signal(harness: Any, sig: signal.Signals) -> None:
    log = harness.tmp / "up.out"
    with open(log, "wb") as out:
        proc = start_up(harness, out)
    try:
        pids = wait_running(harness, proc, lambda: log.read_text(errors="replace"))
        proc.send_signal(sig)
        code = proc.wait(90)
        text = log.read_text(errors="replace")
        assert code == 0, text
        assert "Traceback" not in text, text
        assert "\nstopped\n" in text, text
        assert_nothing_left(harness, pids)
    finally:
        stop(proc)


def test_up_stops_everything_when_its_output_pipe_closes(harness: Any) -> None:
    proc = start_up(harness, subprocess.PIPE)
    assert proc.stdout is not None
    seen: list[str] = []
    try:

        def output() -> str:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode(errors="replace")  # `up` prints on: no hang
            seen.append(line)
            return "".join(seen)

        pids = wait_running(harness, proc, output)
        proc.stdout.close()  # `| tee log` ended (Ctrl-C in its terminal)
        code = proc.wait(90)
        assert code == 0, "".join(seen)
        assert_nothing_left(harness, pids)
    finally:
        stop(proc)


def test_instances_a_killed_up_left_are_named_by_ps_and_stopped_by_down(harness: Any) -> None:
    log = harness.tmp / "up.out"
    with open(log, "wb") as out:
        proc = start_up(harness, out)
    try:
        pids = wait_running(harness, proc, lambda: log.read_text(errors="replace"))
        proc.kill()
        proc.wait(10)
        left = left_running(harness.data_dir)
        assert len(left) == 2 and instance_procs(harness.cgroup_root) == pids

        ps = harness.cli("ps")
        assert ps.returncode == 3, ps.stdout + ps.stderr
        assert "Traceback" not in ps.stderr
        pid_list = ", ".join(str(pid) for pid in left)
        assert (
            "no Elastin server is running, but 2 instances started by Elastin still run "
            f"(pids {pid_list})"
        ) in ps.stderr
        assert "`elastin down` stops them; `elastin up FILE` re-attaches to them" in ps.stderr

        down = harness.cli("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert "deleting tiny" in down.stdout and "✓ down" in down.stdout
        assert_nothing_left(harness, pids)
        after = harness.cli("ps")  # nothing left: the plain message again
        assert after.returncode == 3, after.stdout + after.stderr
        assert "no instance it started still runs" in after.stderr
    finally:
        stop(proc)


def test_up_detach_that_does_not_settle_keeps_the_server_and_says_so(harness: Any) -> None:
    too_big = SPEC.replace("cpu: 50m", "cpu: 1000")  # no node has it: pending for ever
    spec = harness.write_spec("tiny.yaml", too_big)
    up = harness.cli("up", "--detach", "--port", "0", "--timeout", "3", str(spec))
    try:
        assert up.returncode == 4, up.stdout + up.stderr
        assert "did not settle" in up.stderr
        assert "the server keeps running in the background: `elastin down` stops it" in (
            up.stderr.replace("\n  ", " ")
        )
        pid = int((harness.data_dir / "daemon.pid").read_text())
        assert Path(f"/proc/{pid}").exists()
        down = harness.cli("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert f"stopped the background server (pid {pid})" in down.stdout
        harness.wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 30, "exit")
    finally:
        pid_file = harness.data_dir / "daemon.pid"
        if pid_file.exists():  # `down` did not stop it: do it here
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_down_after_up_detach_leaves_no_instance_running(harness: Any) -> None:
    spec = harness.write_spec("tiny.yaml", SPEC)
    up = harness.cli("up", "--detach", "--port", "0", "--timeout", "60", str(spec))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        pids = instance_procs(harness.cgroup_root)
        assert len(pids) >= 2, pids
        down = harness.cli("down")
        assert down.returncode == 0, down.stdout + down.stderr
        # down waited for the instances before stopping the background server: none is left
        assert_nothing_left(harness, pids)
    finally:
        pid_file = harness.data_dir / "daemon.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
