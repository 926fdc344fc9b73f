"""Changes a user can trust, end to end: rolling updates that keep the old version serving
until the new one is proven and roll back a bad one by themselves; waits whose exit codes
tell the truth; jobs that run again when asked. A real server and agent, real processes, a
real HAProxy carrying a probe's requests (``probe.py`` counts every failed request)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

PY = sys.executable

WEB = """\
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ.get("GREETING", "hi").encode()
        self.send_response(200); self.send_header("content-length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""

# a bounded load loop: 20 requests a second through the mesh, a line of totals every second
PROBE = """\
import os, time, urllib.request
url = os.environ["ELASTIN_UPSTREAM_WEB_URL"] + "/"
ok = fail = 0
for i in range(20 * 600):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read(); ok += 1
    except Exception as e:
        fail += 1; print("failed:", repr(e), flush=True)
    if i % 20 == 0:
        print(f"ok={ok} fail={fail}", flush=True)
    time.sleep(0.05)
"""


def spec(web_command: str, workdir: Path, greeting: str = "hi", update: str = "") -> str:
    return f"""
app: t
services:
  web:
    command: {web_command}
    workdir: {workdir}
    env: {{GREETING: {greeting}}}
    ports: {{http: 0}}
    replicas: 2
    resources: {{cpu: 100m, memory: 48Mi}}
    health: {{http: /, interval: 1s, timeout: 1s}}
    update: {{min_healthy_time: 1s, healthy_deadline: 60s{update}}}
  probe:
    command: ["{PY}", probe.py]
    workdir: {workdir}
    upstreams: [web]
    depends_on: [web]
    resources: {{cpu: 100m, memory: 48Mi}}
"""


GOOD = f'["{PY}", web.py]'


def totals(h: Any) -> tuple[int, int]:
    out = h.cli("logs", "probe", "--tail", "50").stdout
    found = re.findall(r"ok=(\d+) fail=(\d+)", out)
    assert found, out
    ok, fail = found[-1]
    return int(ok), int(fail)


def app_dir(h: Any) -> Path:
    """web.py and probe.py in a directory the workloads' dynamic users may read."""
    d = h.tmp / "app"
    d.mkdir(mode=0o755, exist_ok=True)
    d.chmod(0o755)
    (d / "web.py").write_text(WEB)
    (d / "probe.py").write_text(PROBE)
    for f in d.iterdir():
        f.chmod(0o644)
    return d


def web_pids(h: Any) -> set[int]:
    """The running web instances the server wants (not old ones still draining)."""
    return {a.pid for a in h.running("t", "web") if a.desired == "run"}


def test_a_bad_version_is_rolled_back_while_the_old_one_serves_every_request(
    harness: Any,
) -> None:
    h = harness.start()
    d = app_dir(h)
    path = h.write_spec("t.yaml", spec(GOOD, d))
    h.cli("apply", str(path), "--wait", "--timeout", "90", check=True)
    h.wait_for(lambda: totals(h)[0] > 20, 60, "the probe's requests")
    before = web_pids(h)
    assert len(before) == 2

    # a broken command: the new instances never start; the old ones keep serving
    h.write_spec("t.yaml", spec('["/nonexistent/web"]', d))
    res = h.cli("apply", str(path), "--wait", "--timeout", "90")
    assert res.returncode == 4, res.stdout + res.stderr
    assert "rolled back to version 1" in res.stderr, res.stderr
    assert web_pids(h) == before  # never taken down
    history = json.loads(h.cli("rollout", "history", "web", "--json", check=True).stdout)
    assert [(r["version"], r["state"]) for r in history] == [(1, "stable"), (2, "failed")]
    status = h.cli("rollout", "status", "web", check=True).stdout
    assert "version 1" in status and "stable" in status
    # the failure was that apply's: the same good spec again waits and succeeds
    h.write_spec("t.yaml", spec(GOOD, d))
    h.cli("apply", str(path), "--wait", "--timeout", "90", check=True)
    ok_then, _ = totals(h)

    # a good version rolls out instance by instance, still without a failed request
    h.write_spec("t.yaml", spec(GOOD, d, greeting="hello"))
    h.cli("apply", str(path), "--wait", "--timeout", "90", check=True)
    after = web_pids(h)
    assert len(after) == 2 and not (after & before)
    h.wait_for(lambda: totals(h)[0] > ok_then + 20, 60, "more requests")
    _, fail = totals(h)
    assert fail == 0, h.cli("logs", "probe", "--tail", "20").stdout

    # undo goes back to the previous version's spec
    h.cli("rollout", "undo", "web", "--wait", "--timeout", "90", check=True)
    history = json.loads(h.cli("rollout", "history", "web", "--json", check=True).stdout)
    current = [r for r in history if r["current"]]
    assert current and current[0]["cause"] == "undo" and current[0]["state"] == "stable"
    _, fail2 = totals(h)
    assert fail2 == 0


def test_restart_replaces_instances_one_by_one(harness: Any) -> None:
    h = harness.start()
    d = app_dir(h)
    path = h.write_spec("t.yaml", spec(GOOD, d))
    h.cli("apply", str(path), "--wait", "--timeout", "90", check=True)
    before = web_pids(h)
    res = h.cli("restart", "web", "--wait", "--timeout", "90", check=True)
    assert "version 2" in res.stdout
    after = web_pids(h)
    assert len(after) == 2 and not (after & before)
    h.wait_for(lambda: totals(h)[0] > 20, 60, "the probe's requests")
    assert totals(h)[1] == 0


JOB = """
app: j
jobs:
  report:
    command: ["{py}", "-c", "{code}"]
    resources: {{cpu: 100m, memory: 32Mi}}
    retries: {retries}
    retry_delay: 0.1s
"""


def job_spec(code: str, retries: int = 1) -> str:
    return JOB.format(py=PY, code=code, retries=retries)


def test_waits_tell_the_truth_about_jobs_and_jobs_run_again(harness: Any) -> None:
    h = harness.start()
    bad = h.write_spec("bad.yaml", job_spec("import sys; sys.exit(3)"))
    res = h.cli("apply", str(bad), "--wait", "--timeout", "90")
    assert res.returncode == 4, res.stdout + res.stderr
    assert "2 run(s) failed (1 retries)" in res.stderr and "code 3" in res.stderr
    h.cli("down", "j", check=True)

    good = h.write_spec("good.yaml", job_spec("print('ran')"))
    h.cli("apply", str(good), "--wait", "--timeout", "90", check=True)  # old failures: history
    runs = [a for a in h.allocs("j") if a.status == "complete"]
    assert len(runs) == 1
    (report,) = json.loads(h.cli("ps", "--json", check=True).stdout)["services"]
    assert (report["complete"], report["failed"]) == (1, 0)  # not the old run's "2 failed"
    assert h.cli("logs", "report", check=True).stdout.count("ran") == 1
    # down and up again: a new run, not "1/1 done" from the last one
    h.cli("down", "j", check=True)
    h.cli("apply", str(good), "--wait", "--timeout", "90", check=True)
    runs = [a for a in h.allocs("j") if a.status == "complete"]
    assert len(runs) == 2 and len({a.spec_version for a in runs}) == 2
    assert h.cli("logs", "report", check=True).stdout.count("ran") == 1  # this run's output
    # and on demand
    h.cli("job", "run", "report", "--wait", "--timeout", "90", check=True)
    runs = [a for a in h.allocs("j") if a.status == "complete"]
    assert len(runs) == 3


def test_a_crash_looping_service_without_a_check_does_not_settle(harness: Any) -> None:
    h = harness.start()
    path = h.write_spec(
        "c.yaml",
        f"""
app: c
services:
  crash:
    command: ["{PY}", "-c", "import time; time.sleep(0.2); raise SystemExit(1)"]
    resources: {{cpu: 100m, memory: 32Mi}}
    restart: {{backoff: 0.1s}}
""",
    )
    res = h.cli("apply", str(path), "--wait", "--timeout", "90")
    assert res.returncode == 4, res.stdout + res.stderr
    assert "restarted 3 time(s)" in res.stderr
