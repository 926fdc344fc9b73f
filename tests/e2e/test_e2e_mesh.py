"""Upstreams through the node's HAProxy, end to end: a caller reaches a service through its
private listener, replicas are added without a reload, and a killed HAProxy comes back."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from elastin.mesh.haproxy.process import haproxy_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed"),
]

PY = sys.executable
API = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        b = os.environ['ELASTIN_ALLOC_ID'].encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(b)))\n"
    "        self.end_headers(); self.wfile.write(b)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)"
    ".serve_forever()\n"
)


def spec(replicas: int) -> str:
    return f"""
app: m
services:
  api:
    command: ["{PY}", "-c", {json.dumps(API)}]
    ports: {{http: 0}}
    replicas: {replicas}
    resources: {{cpu: 100m, memory: 48Mi}}
    health: {{http: /, interval: 1s}}
  web:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    upstreams: [api]
    resources: {{cpu: 50m, memory: 32Mi}}
"""


def test_upstream_through_haproxy(harness: Any) -> None:
    h = harness.start()
    path = harness.write_spec("m.yaml", spec(1))
    h.cli("apply", str(path), "--wait", check=True)
    web = h.wait_for(lambda: h.running("m", "web"), 30, "web running")[0]
    port = dict(web.ports)["upstream.api"]
    url = f"http://127.0.0.1:{port}/"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    api = h.wait_for(lambda: h.running("m", "api"), 30, "api running")
    h.wait_for(lambda: get() == api[0].id, 30, "a call through the mesh")
    # every request through the mesh is a JSON line in the access log
    logged = h.wait_for(
        lambda: [json.loads(x) for x in h.cli("logs", "--mesh", "api").stdout.splitlines()],
        30,
        "access log lines",
    )
    assert logged[-1]["service"] == "c_m.api.http" and logged[-1]["status"] == 200
    assert logged[-1]["caller"] == "m/web" and logged[-1]["traceparent"].startswith("00-")
    assert h.cli("logs", "--mesh", "nope").stdout == ""
    pid_file = Path(h.data_dir) / "mesh" / "haproxy.pid"
    master = int(pid_file.read_text().split()[0])
    # two more replicas: endpoint churn, served without a reload
    path.write_text(spec(3))
    h.cli("apply", str(path), "--wait", check=True)
    ids = {a.id for a in h.running("m", "api")}
    assert len(ids) == 3
    h.wait_for(lambda: {get() for _ in range(12)} == ids, 30, "all three replicas answer")
    assert int(pid_file.read_text().split()[0]) == master
    # HAProxy killed: the agent starts it again and traffic resumes
    os.killpg(master, signal.SIGKILL)  # master and workers
    time.sleep(0.5)
    h.wait_for(lambda: get() in ids, 30, "traffic after haproxy restarts")
    assert int(pid_file.read_text().split()[0]) != master
