"""``elastin exec``, ``ps``'s pid, ``logs --since/--timestamps`` and ``logs --mesh SERVICE
--tail N``, end to end: a real server, agent, instances and HAProxy (issue #11, items 7
and 11)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from elastin.mesh.haproxy.process import haproxy_binary

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
    argv = Path(f"/proc/{a.pid}/cmdline").read_text().split("\0")
    assert argv[:2] == [PY, "-c"], argv  # not the supervisor's sh
    h.wait_for(lambda: "early" in h.cli("logs", "talker").stdout, 30, "early")
    stamped = h.cli("logs", "talker", "--timestamps", check=True).stdout
    assert re.fullmatch(STAMP.pattern + "early\n", stamped), stamped
    assert h.cli("logs", "talker", check=True).stdout == "early\n"
    cut = datetime.now(UTC).isoformat()  # after "early" was written, before "late" is

    # exec: output, exit code, the instance's environment, user, workdir (the spec's
    # directory) and HOME
    res = h.cli(
        "exec",
        "x.talker[0]",
        "--",
        "sh",
        "-c",
        'echo "$ELASTIN_APP $(pwd) $HOME"; echo e >&2; exit 7',
    )
    assert res.returncode == 7, res
    home = h.data_dir / "allocs" / a.id / "local"
    assert res.stdout == f"x {h.tmp} {home}\n" and res.stderr == "e\n"
    res = h.cli("exec", a.short_id, "--", "sh", "-c", 'touch "$HOME/go"')  # the short id
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


ANSWER = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length', '2')\n"
    "        self.end_headers(); self.wfile.write(b'ok')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)"
    ".serve_forever()\n"
)
MESH_SPEC = f"""
app: m
services:
  api:
    command: ["{PY}", "-c", {json.dumps(ANSWER)}]
    ports: {{http: 0}}
    resources: {{cpu: 100m, memory: 48Mi}}
    health: {{http: /, interval: 1s}}
    mesh: {{access_log: all}}
  noise:
    command: ["{PY}", "-c", {json.dumps(ANSWER)}]
    ports: {{http: 0}}
    resources: {{cpu: 100m, memory: 48Mi}}
    health: {{http: /, interval: 1s}}
    mesh: {{access_log: all}}
  web:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    upstreams: [api, noise]
    resources: {{cpu: 50m, memory: 32Mi}}
"""


@pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed")
def test_mesh_tail_returns_the_last_n_requests_of_a_service(harness: Any) -> None:
    """`logs --mesh api --tail 3` read the last 60 lines of the node's access log and kept
    api's: after 400 requests to another service it printed none."""
    h = harness.start()
    h.cli("apply", str(h.write_spec("m.yaml", MESH_SPEC)), "--wait", check=True)
    (web,) = h.wait_for(lambda: h.running("m", "web"), 30, "web running")
    (api,) = h.running("m", "api")
    ports = dict(web.ports)

    def get(upstream: str, path: str) -> bool:
        url = f"http://127.0.0.1:{ports['upstream.' + upstream]}{path}"
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200

    h.wait_for(lambda: get("api", "/ready") and get("noise", "/ready"), 30, "calls through")
    for i in range(5):
        get("api", f"/call/{i}")
    for _ in range(400):
        get("noise", "/")

    def api_tail() -> list[dict[str, Any]]:
        out = h.cli("logs", "--mesh", "api", "--tail", "3", check=True).stdout
        return [json.loads(line) for line in out.splitlines()]

    logged = h.wait_for(lambda: len(api_tail()) == 3 and api_tail(), 30, "3 lines of api")
    assert [e["path"] for e in logged] == ["/call/2", "/call/3", "/call/4"]  # oldest first
    assert {e["service"] for e in logged} == {"m/api"}
    assert {e["caller"] for e in logged} == {web.name}  # "m.web[0]", as `ps` names it
    assert {e["endpoint"] for e in logged} == {api.name}
    noise = h.cli("logs", "--mesh", "m/noise", "--tail", "2", check=True).stdout.splitlines()
    assert len(noise) == 2
