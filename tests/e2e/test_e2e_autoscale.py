"""Horizontal autoscaling end to end (issue #13, items 1 and 7): a real server and agent, a
service of real tasks, real requests through the node's HAProxy. Slow requests in flight on
the one replica scale the service up to ``max``; once the load stops, the scale-down window
(2 s) passes and it goes back to ``min``; an event explains each change, ``elastin events
--service`` shows them (with the decision's values under ``--json``) and ``elastin ps`` shows
the bounds and the metric against its target."""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import pytest
from e2e_support import http_service, status

from elastin.mesh.haproxy.process import haproxy_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed"),
]

PY = sys.executable
API = http_service(1)
SPEC = f"""
app: auto
services:
  api:
    command: ["{PY}", "-c", {json.dumps(API)}]
    ports: {{http: 0}}
    # a replica joins the proxies once it answers: without a check it would be ready before
    # it listens, and a request could meet refusals on every retry (docs/autoscaling.md)
    health: {{tcp: http, interval: 1s}}
    resources: {{cpu: 100m, memory: 48Mi}}
    autoscale:
      min: 1
      max: 3
      metrics: [{{inflight: 1}}]
      behavior: {{scale_down: {{stabilization_window: 2s}}}}
  web:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    upstreams: [api]
    resources: {{cpu: 50m, memory: 32Mi}}
"""


def test_scales_up_under_load_and_back_down_when_it_stops(harness: Any) -> None:
    h = harness.start()
    path = harness.write_spec("auto.yaml", SPEC)
    h.cli("apply", str(path), "--wait", check=True)
    web = h.wait_for(lambda: h.running("auto", "web"), 30, "web running")[0]
    url = f"http://127.0.0.1:{dict(web.ports)['upstream.api']}"
    c = h.client

    def get(path: str) -> int:
        return status(url + path)

    def api() -> dict[str, Any]:
        return next(s for s in c.services() if s["name"] == "api")

    h.wait_for(lambda: get("/") == 200, 30, "a call through the mesh")
    assert api()["desired"] == 1
    stop = threading.Event()
    failed: list[int] = []

    def load() -> None:
        for _ in range(10_000):  # bounded: also stops when the test says so
            if stop.is_set():
                return
            if (code := get("/slow")) != 200:
                failed.append(code)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        # three slow requests in flight on one replica, target 1 each: up to 3 (max)
        h.wait_for(lambda: api()["desired"] == 3, 60, "a scale-up to 3 replicas")
        h.wait_for(lambda: len(h.running("auto", "api")) == 3, 60, "3 replicas running")
        out = h.cli("ps", check=True).stdout
        assert "AUTOSCALED" in out and "auto/api" in out and "1..3" in out, out
        assert "inflight" in out, out
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failed, failed
    # no load: after the 2 s scale-down window, back to min
    h.wait_for(lambda: api()["desired"] == 1, 60, "a scale-down to 1 replica")
    h.wait_for(lambda: len(h.running("auto", "api")) == 1, 60, "1 replica running")

    res = h.cli("events", "--service", "api", "--json", "--limit", "0", check=True)
    events = json.loads(res.stdout)
    assert all(e["subject"].startswith(("auto/api", "auto.api[")) for e in events), events
    scaled = [e for e in events if e["type"] == "service.autoscaled"]
    ups = [e for e in scaled if e["data"]["desired"] > e["data"]["current"]]
    downs = [e for e in scaled if e["data"]["desired"] < e["data"]["current"]]
    assert ups and downs, scaled
    up = ups[0]
    assert up["message"].startswith("scale up 1 → ") and "inflight" in up["message"]
    assert up["data"]["metrics"][0]["metric"] == "inflight"
    assert up["data"]["metrics"][0]["value"] >= 1 and up["data"]["max"] == 3
    assert downs[-1]["data"]["desired"] == 1 and "scale down" in downs[-1]["message"]
    text = h.cli("events", "--service", "auto/api", "--limit", "0", check=True).stdout
    assert "service.autoscaled" in text and "scale up" in text, text
    services = json.loads(h.cli("ps", "--json", check=True).stdout)["services"]
    auto = next(s for s in services if s["name"] == "api")["autoscale"]
    assert auto["min"] == 1 and auto["max"] == 3 and auto["metrics"][0]["target"] == 1.0
