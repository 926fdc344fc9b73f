"""Defaults a newcomer expects, against a real server and agent: a task without `workdir:` runs
in its spec file's directory (as compose's services do), so `command: [python3, app.py]` finds
the `app.py` beside the spec — it crash-looped "can't open file …/local/api.py" before. Its
dynamic user reads that directory read-only; one it cannot read refuses the start with the
path and the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

APP = """\
import os
print("RAN IN", os.getcwd(), flush=True)
try:
    open("written-by-the-task", "w")
except OSError as e:
    print("READ-ONLY", e.errno, flush=True)
"""

SPEC = """\
app: {app}
jobs:
  hello:
    command: [python3, app.py]
    resources: {{cpu: 100m, memory: 64Mi}}
    retries: 0
"""


def write_project(directory: Path, app: str) -> Path:
    directory.mkdir(mode=0o755, exist_ok=True)
    (directory / "app.py").write_text(APP)
    spec = directory / "spec.yaml"
    spec.write_text(SPEC.format(app=app))
    return spec


def job(harness: Any, app: str) -> Any:
    return harness.wait_for(
        lambda: [a for a in harness.allocs(app) if a.status in ("complete", "failed")],
        60,
        f"{app}'s job finished",
    )[0]


def test_a_relative_command_runs_beside_its_spec(harness: Any) -> None:
    h = harness.start()
    project = harness.tmp / "project"
    spec = write_project(project, "hello")
    h.cli("apply", str(spec), check=True)
    done = job(h, "hello")
    assert (done.status, done.exit_code) == ("complete", 0), done
    out = h.cli("logs", "hello", check=True).stdout
    assert f"RAN IN {project}" in out, out
    assert "READ-ONLY" in out, out  # a dynamic user's workdir is not its to write
    assert not (project / "written-by-the-task").exists()


def test_a_spec_directory_its_user_cannot_read_refuses_the_start_with_the_fix(
    harness: Any,
) -> None:
    h = harness.start()
    private = harness.tmp / "private"
    spec = write_project(private, "private")
    private.chmod(0o700)
    h.cli("apply", str(spec), check=True)
    done = job(h, "private")
    assert done.status == "failed", done
    assert str(private) in done.reason and "user:" in done.reason, done.reason
    events = json.loads(h.cli("events", "--json", "--limit", "200", check=True).stdout)
    assert any(str(private) in e["message"] for e in events), events
