"""Scale to zero end to end (issue #13, item 3): a real server and agent, services of real
tasks, requests with curl through the node's HAProxy. A ``min: 0, idle_after: 2s`` service
goes to zero replicas once idle; the next request is held by the mesh while a replica starts
and answered 200 (the cold start, from the request to its response, is printed: no
threshold); with more requests than the service lets the mesh hold (``mesh.max_queue: 2``)
the rest get the named 503 at once, and the held ones are answered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from elastin.mesh.haproxy.process import haproxy_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]

PY = sys.executable
APP = (
    "import http.server, os, time\n"
    "time.sleep(float(os.environ.get('START_DELAY', '0')))\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length', '2')\n"
    "        self.end_headers(); self.wfile.write(b'ok')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)"
    ".serve_forever()\n"
)
SPEC = f"""
app: zero
services:
  api:
    command: ["{PY}", "-c", {json.dumps(APP)}]
    ports: {{http: 0}}
    resources: {{cpu: 100m, memory: 48Mi}}
    autoscale: {{min: 0, max: 2, metrics: [{{inflight: 10}}], idle_after: 2s}}
  slow:
    command: ["{PY}", "-c", {json.dumps(APP)}]
    env: {{START_DELAY: "2"}}
    ports: {{http: 0}}
    health: {{tcp: http}}
    mesh: {{max_queue: 2}}
    resources: {{cpu: 100m, memory: 48Mi}}
    autoscale: {{min: 0, max: 2, metrics: [{{inflight: 10}}], idle_after: 2s}}
  web:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    upstreams: [api, slow]
    resources: {{cpu: 50m, memory: 32Mi}}
"""


def curl(url: str) -> tuple[int, str, float]:
    """Status, body and seconds of one GET through the mesh (curl)."""
    out = subprocess.run(
        ["curl", "-s", "-m", "60", "-w", "\n%{http_code} %{time_total}", url],
        capture_output=True,
        text=True,
        timeout=90,
    ).stdout
    body, _, tail = out.rpartition("\n")
    code, seconds = tail.split()
    return int(code), body, float(seconds)


def test_scales_to_zero_when_idle_and_holds_the_next_request(harness: Any) -> None:
    h = harness.start()
    path = harness.write_spec("zero.yaml", SPEC)
    h.cli("apply", str(path), "--wait", check=True)
    web = h.wait_for(lambda: h.running("zero", "web"), 30, "web running")[0]
    ports = dict(web.ports)
    api_url = f"http://127.0.0.1:{ports['upstream.api']}/"
    slow_url = f"http://127.0.0.1:{ports['upstream.slow']}/"
    c = h.client

    def desired(name: str) -> int:
        return int(next(s for s in c.services() if s["name"] == name)["desired"])

    h.wait_for(lambda: curl(api_url)[0] == 200, 30, "a call through the mesh")
    # idle for 2 s: both go to zero replicas, and their instances stop
    for name in ("api", "slow"):
        h.wait_for(lambda n=name: desired(n) == 0, 60, f"{name} scaled to zero")
        h.wait_for(lambda n=name: not h.running("zero", n), 60, f"{name} stopped")
    time.sleep(1)  # the stop's mesh version reaches the proxy (it drains first anyway)

    # the next request is held while a replica starts, then answered
    sent = time.time()
    code, body, seconds = curl(api_url)
    assert (code, body) == (200, "ok"), (code, body)
    print(f"\ncold start through the mesh (held request to its response): {seconds:.3f} s")
    assert desired("api") == 1
    events = json.loads(h.cli("events", "--service", "zero/api", "--json", check=True).stdout)
    scaled = [e for e in events if e["type"] == "service.autoscaled"]
    assert any(e["data"]["limit"] == "idle" for e in scaled), scaled
    up = [e for e in scaled if e["data"]["limit"] == "held-request"]
    assert up, scaled
    new = max((a for a in h.allocs("zero") if a.workload == "api"), key=lambda a: a.created_at)
    print(
        f"  the scale-up event {up[-1]['time'] - sent:+.3f} s after the request, the new "
        f"allocation placed {new.created_at - sent:+.3f} s, ready {new.ready_at - sent:+.3f} s"
    )
    code, _, warm = curl(api_url)
    assert code == 200
    print(f"the next request, warm: {warm * 1000:.1f} ms")

    # more requests than the mesh holds for `slow` (max_queue 2; it takes 2 s to start):
    # two are held and answered, the others get the named 503 at once
    results: list[tuple[int, str, float]] = []
    lock = threading.Lock()

    def call() -> None:
        r = curl(slow_url)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    codes = sorted(r[0] for r in results)
    assert codes == [200, 200, 503, 503, 503], results
    for code, body, _ in results:
        if code == 503:
            assert "too many requests held for zero.slow.http" in body, body
        else:
            assert body == "ok"
    held = [s for code, _, s in results if code == 200]
    print(f"slow service (2 s start, a health check): held requests answered in {held}")
