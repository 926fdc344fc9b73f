"""Upstreams through the node's HAProxy, end to end: a caller reaches a service through its
private listener, replicas are added without a reload, a killed HAProxy comes back, the
registry lists and watches endpoints, replicas scaled away under load drain first, and an
agent killed and started again under load leaves HAProxy and every request untouched."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from elastin.mesh.haproxy.process import haproxy_binary
from elastin.sdk import EngineError, MeshClient

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed"),
]

PY = sys.executable
API = (
    "import http.server, os, time\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        b = os.environ['ELASTIN_ALLOC_ID'].encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(b)))\n"
    "        self.end_headers(); self.wfile.write(b)\n"
    "    def do_POST(self):\n"
    "        self.rfile.read(int(self.headers.get('Content-Length', 0)))\n"
    "        time.sleep(0.05)\n"
    "        self.do_GET()\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)"
    ".serve_forever()\n"
)


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}, as Prometheus reads it."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def dns_query(name: str, qtype: int) -> bytes:
    labels = b"".join(bytes([len(x)]) + x.encode() for x in name.split("."))
    head = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    return head + labels + b"\0" + struct.pack("!HH", qtype, 1)


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
    mesh: {{access_log: all, trace_sample: 1}}  # every request logged, each with a trace
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
    assert logged[-1]["service"] == "m/api" and logged[-1]["status"] == 200  # the CLI's names
    assert logged[-1]["caller"] == web.name and logged[-1]["traceparent"].startswith("00-")
    assert logged[-1]["endpoint"] == api[0].name
    assert h.cli("logs", "--mesh", "nope").stdout == ""
    # metrics: the agent's own /metrics labels the mesh's traffic with Elastin's names; the
    # server sums every node's (heartbeats) for `elastin traffic` and /v1/metrics
    (node,) = h.client.nodes()
    agent_metrics = f"http://{dict(node['attributes'])['agent.metrics']}/metrics"
    with urllib.request.urlopen(agent_metrics, timeout=5) as r:
        text = r.read().decode()
    found = metric_samples(text)
    api_port = (("app", "m"), ("port", "http"), ("service", "api"))
    assert ("elastin_mesh_requests_total", api_port) in found, text
    assert found[("elastin_agent_mesh_up", ())] == 1, text
    exporter = int(found[("elastin_agent_mesh_exporter_port", ())])
    with urllib.request.urlopen(f"http://127.0.0.1:{exporter}/metrics", timeout=5) as r:
        assert 'proxy="c_m.api.http"' in r.read().decode()  # HAProxy's own exporter
    traffic = h.wait_for(
        lambda: [
            t
            for t in json.loads(h.cli("traffic", "--json", check=True).stdout)["services"]
            if t["service"] == "api" and t["requests"] > 0
        ],
        30,
        "traffic reported by the agent's heartbeat",
    )
    assert traffic[0]["endpoints_up"] == 1  # (errors: the 503s before api was ready)
    assert "m/api" in h.cli("traffic", check=True).stdout
    # DNS: the agent answers <service>.service.elastin from the snapshot its proxy serves,
    # and every instance is told where (ELASTIN_DNS)
    dns = dict(node["attributes"])["agent.dns"]
    host, _, dns_port = dns.partition(":")
    environ = Path(f"/proc/{web.pid}/environ").read_bytes().split(b"\0")
    assert f"ELASTIN_DNS={dns}".encode() in environ
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(dns_query("_http._tcp.api.m.service.elastin", 33), (host, int(dns_port)))
        reply = s.recv(4096)
    assert reply[3] & 0xF == 0 and struct.unpack("!H", reply[6:8])[0] == 1  # one SRV record
    assert struct.pack("!H", dict(api[0].ports)["http"]) in reply
    server_metrics = h.client.metrics()
    assert any(
        name == "elastin_mesh_requests_total" and dict(labels).get("service") == "api"
        for name, labels in metric_samples(server_metrics)
    ), server_metrics
    assert all(
        "node" in dict(labels)
        for name, labels in metric_samples(server_metrics)
        if name.startswith("elastin_mesh_")
    )
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


def test_registry_lists_and_watches_endpoints(harness: Any) -> None:
    h = harness.start()
    path = harness.write_spec("m.yaml", spec(1))
    h.cli("apply", str(path), "--wait", check=True)
    c = h.client
    api = h.wait_for(lambda: h.running("m", "api"), 30, "api running")
    first = h.wait_for(
        lambda: (r := c.mesh_services("m/api"))["services"][0]["ports"][0]["endpoints"] and r,
        30,
        "api's endpoint in the registry",
    )
    (port,) = first["services"][0]["ports"]
    assert port["name"] == "http" and port["protocol"] == "http"
    assert port["endpoints"][0]["allocation"] == api[0].id
    # a watch: a blocking query past the index returns when a replica comes
    seen: dict[str, Any] = {}

    def watch() -> None:
        index = first["index"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = c.mesh_services("m/api", index=index, wait=10)
            index = r["index"]
            ready = [e for e in r["services"][0]["ports"][0]["endpoints"] if e["ready"]]
            if len(ready) == 2:
                seen.update(r)
                return

    t = threading.Thread(target=watch)
    t.start()
    path.write_text(spec(2))
    h.cli("apply", str(path), check=True)
    t.join(70)
    assert seen, "the watch did not see the second endpoint"
    out = h.cli("endpoints", "m/api", check=True).stdout
    assert out.count("m.api[") == 2 and "ready" in out
    data = json.loads(h.cli("endpoints", "--json", check=True).stdout)
    assert {s["name"] for s in data["services"]} == {"api", "web"}
    assert h.cli("endpoints", "nope").returncode == 1
    # the SDK's mesh client: resolve, and a watch that sees the scale-down
    token = (Path(h.data_dir) / "token").read_text().strip()
    with MeshClient(c.url, token) as mesh:
        endpoints = mesh.resolve("m/api")
        assert len(endpoints) == 2 and all(e.ready and e.port for e in endpoints)
        watcher = mesh.watch("api", timeout=60)
        assert len(next(watcher)) == 2
        path.write_text(spec(1))
        h.cli("apply", str(path), check=True)
        assert len(next(watcher)) == 1
        with pytest.raises(EngineError, match="no port 'nope'"):
            mesh.resolve("api", port="nope")
        with pytest.raises(EngineError, match="no service 'nope'"):
            mesh.resolve("nope")


def test_scaled_away_replicas_drain_under_load(harness: Any) -> None:
    h = harness.start()
    path = harness.write_spec("m.yaml", spec(3))
    h.cli("apply", str(path), "--wait", check=True)
    web = h.wait_for(lambda: h.running("m", "web"), 30, "web running")[0]
    url = f"http://127.0.0.1:{dict(web.ports)['upstream.api']}/"
    ids = {a.id for a in h.wait_for(lambda: h.running("m", "api"), 30, "api running")}

    def post() -> tuple[int, str]:
        req = urllib.request.Request(url, data=b"x", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError as e:
            return 0, str(e)

    h.wait_for(lambda: {post()[1] for _ in range(12)} == ids, 30, "all three replicas answer")
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        for _ in range(2000):  # bounded: also stops when the test says so
            if stop.is_set():
                return
            results.append(post())

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    h.wait_for(lambda: len(results) >= 20, 30, "load under way")
    path.write_text(spec(1))
    h.cli("apply", str(path), check=True)
    h.wait_for(lambda: len(h.running("m", "api")) == 1, 30, "scaled down to one")
    after = len(results)
    h.wait_for(lambda: len(results) >= after + 20, 30, "load after the scale-down")
    stop.set()
    for t in threads:
        t.join(30)
    failed = [r for r in results if r[0] != 200]
    # POST is not idempotent, so the mesh never retries one an endpoint had received: none
    # failed because the two replicas left every proxy before they were stopped
    assert len(results) > 50 and not failed, (len(results), failed[:5])
    events = h.cli("events", "--json", check=True).stdout
    assert events.count("out of every proxy") >= 2, events


def test_agent_restart_leaves_haproxy_and_traffic_untouched(harness: Any) -> None:
    h = harness.start()
    path = harness.write_spec("m.yaml", spec(2))
    h.cli("apply", str(path), "--wait", check=True)
    web = h.wait_for(lambda: h.running("m", "web"), 30, "web running")[0]
    url = f"http://127.0.0.1:{dict(web.ports)['upstream.api']}/"
    api = h.wait_for(lambda: h.running("m", "api"), 30, "api running")
    ids = {a.id for a in api}
    pids = {a.pid for a in [web, *api]}

    def get() -> int:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status if r.read().decode() in ids else -1
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    h.wait_for(lambda: get() == 200, 30, "a call through the mesh")
    pid_file = Path(h.data_dir) / "mesh" / "haproxy.pid"
    master = int(pid_file.read_text().split()[0])
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        for _ in range(5000):  # bounded; ends when the test says so
            if stop.is_set():
                return
            statuses.append(get())

    t = threading.Thread(target=load)
    t.start()
    h.wait_for(lambda: len(statuses) >= 10, 30, "load under way")
    h.kill("agent", signal.SIGKILL)  # the proxy and the instances carry on without it
    killed = len(statuses)
    h.wait_for(lambda: len(statuses) >= killed + 20, 30, "calls while no agent runs")
    during = len(statuses)
    h.start_agent()  # the new agent finds HAProxy by its pid file and takes it over
    h.wait_for(lambda: len(statuses) >= during + 20, 30, "calls after the agent is back")
    stop.set()
    t.join(30)
    assert len(statuses) > during > 10
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert int(pid_file.read_text().split()[0]) == master  # the same master throughout

    def reattached() -> set[str]:
        events = json.loads(h.cli("events", "--json", "--limit", "500", check=True).stdout)
        return {e["message"] for e in events if e["type"] == "alloc.reattached"}

    # the new agent took the instances over (not merely left them running)
    want = {f"re-attached to pid {p}" for p in pids}
    h.wait_for(lambda: reattached() >= want, 30, "the new agent re-attached")
