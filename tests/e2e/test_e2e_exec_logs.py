"""``elastin exec``, ``ps``'s pid and ``logs --since/--timestamps``, end to end: a real server,
agent and instance (issue #11, items 7 and 11)."""

from __future__ import annotations

import os
import re
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

PY = sys.executable
STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ")
# says "early"; says "late" once a file "go" appears in its HOME (made with `elastin exec`)
TALKER = (
    "import os, time\n"
    "print('early', flush=True)\n"
    "go = os.path.join(os.environ['HOME'], 'go')\n"
    "while not os.path.exists(go): time.sleep(0.05)\n"
    "print('late', flush=True)\n"
    "time.sleep(600)\n"
)
SPEC = f"""
app: x
services:
  talker:
    command: ["{PY}", "-c", {TALKER!r}]
    resources: {{cpu: 100m, memory: 64Mi}}
"""


def test_exec_pid_and_timestamped_logs(harness: Any) -> None:
    h = harness.start()
    spec = h.write_spec("x.yaml", SPEC)
    h.cli("apply", str(spec), "--wait", "--timeout", "60", check=True)
    (a,) = h.wait_for(lambda: h.running("x", "talker"), 60, "talker running")
    # ps shows the program's own pid
    assert "-c" in Path(f"/proc/{a.pid}/cmdline").read_text().split("\0")
    h.wait_for(lambda: "early" in h.cli("logs", "talker").stdout, 30, "early")
    stamped = h.cli("logs", "talker", "--timestamps", check=True).stdout
    assert re.fullmatch(STAMP.pattern + "early\n", stamped), stamped
    assert h.cli("logs", "talker", check=True).stdout == "early\n"
    cut = datetime.now(UTC).isoformat()  # after "early" was written, before "late" is

    # exec: output, exit code, the instance's environment, user and HOME (its workdir)
    res = h.cli(
        "exec", "x.talker[0]", "--", "sh", "-c", 'echo "$ELASTIN_APP $(pwd)"; echo e >&2; exit 7'
    )
    assert res.returncode == 7, res
    assert res.stdout == f"x {h.data_dir / 'allocs' / a.id / 'local'}\n" and res.stderr == "e\n"
    res = h.cli("exec", a.short_id, "--", "touch", "go")  # the short id; HOME is its own
    assert res.returncode == 0, res
    h.wait_for(lambda: "late" in h.cli("logs", "talker").stdout, 30, "late")
    res = h.cli("exec", "--timeout", "0.5", "talker", "--", "sleep", "60")
    assert res.returncode == 124 and "--timeout" in res.stderr, res
    res = h.cli("exec", "talker[3]", "--", "true")
    assert res.returncode == 1 and "no instance 'talker[3]'" in res.stderr, res

    # --since: a time, or a duration back from now
    assert h.cli("logs", "talker", "--since", cut, check=True).stdout == "late\n"
    assert h.cli("logs", "talker", "--since", "10m", check=True).stdout == "early\nlate\n"
    res = h.cli("logs", "talker", "--since", "yesterday")
    assert res.returncode == 1 and "since must be a time or a duration" in res.stderr, res

    # a signal sent to the pid `ps` shows reaches the program: the instance ends (restarts)
    os.kill(a.pid, signal.SIGTERM)
    h.wait_for(
        lambda: [b for b in h.running("x", "talker") if b.pid and b.pid != a.pid],
        60,
        "restarted with a new pid",
    )
