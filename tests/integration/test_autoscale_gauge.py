"""An application gauge drives the horizontal autoscaler end to end (issue #13, item 1).

A real ``elastin daemon`` (server and agent in one process) runs a service of real tasks that
serve ``/metrics`` in Prometheus' text format: a ``queue_depth`` gauge with two label sets,
one read from a file the test writes (the tasks' workdir is the spec's directory). Raising
the gauge above its target scales the service up, with a ``service.autoscaled`` event whose
data names the metric and its value; ``elastin ps``, ``elastin top`` and the metrics API show
it. A page the agent cannot parse leaves the gauge out (the autoscaler keeps the count: no
value, no proposal) and the agent's log says why. Every wait is bounded polling."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from elastin.agent.drivers.cgroups import destroy_root
from elastin.client.http import Client
from elastin.mesh.haproxy.process import haproxy_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed"),
]

PY = sys.executable
EXPORTER = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != '/metrics':
            self.send_response(404); self.send_header('Content-Length', '0'); self.end_headers()
            return
        try:
            depth = open('depth').read().strip()
        except OSError:
            depth = '0'
        body = ('# HELP queue_depth Jobs waiting.\\n# TYPE queue_depth gauge\\n'
                'queue_depth{queue="emails"} ' + depth + '\\n'
                'queue_depth{queue="sms"} 1 1700000000000\\n'
                'queue_depth_total 12345\\n').encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain; version=0.0.4')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()
"""
SPEC = f"""
app: gauge
services:
  worker:
    command: ["{PY}", "-c", {json.dumps(EXPORTER)}]
    ports: {{metrics: 0}}
    health: {{tcp: metrics, interval: 1s}}
    resources: {{cpu: 100m, memory: 48Mi}}
    autoscale:
      min: 1
      max: 3
      metrics: [{{metric: queue_depth, target: 10, port: metrics, path: /metrics}}]
"""

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float, what: str, log: Path | None = None) -> T:
    """Poll ``cond`` until it is true (bounded: a generous deadline, no timing claim)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except Exception as e:  # transient while processes start
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{tail}")


class Daemon:
    """``elastin daemon`` on a data directory and a cgroup root of its own."""

    def __init__(self, tmp: Path) -> None:
        tmp.chmod(0o755)  # the spec's directory, the tasks' workdir: readable, as a project's
        self.tmp = tmp
        self.data = tmp / "data"
        self.log = tmp / "daemon.log"
        self.cgroup_root = f"elastin-test-{secrets.token_hex(4)}"
        self.env = {
            **os.environ,
            "ELASTIN_DATA_DIR": str(self.data),
            "ELASTIN_CGROUP_ROOT": self.cgroup_root,
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{Path(PY).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }
        for var in ("ELASTIN_ADDR", "ELASTIN_TOKEN"):
            self.env.pop(var, None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [PY, "-m", "elastin.cli.main", "daemon", "--port", "0"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc

        def listening() -> bool:
            assert proc.poll() is None, "the daemon exited"
            info = json.loads((self.data / "server.json").read_text())
            return bool(info["pid"] == proc.pid)

        wait_for(listening, 60, "the server", self.log)

    def client(self) -> Client:
        info = json.loads((self.data / "server.json").read_text())
        return Client(info["url"], (self.data / "token").read_text().strip())

    def cli(self, *args: str) -> str:
        res = subprocess.run(
            [PY, "-m", "elastin.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        assert res.returncode == 0, (args, res.stdout, res.stderr)
        return res.stdout

    def haproxy_masters(self) -> list[int]:
        """HAProxy masters running this node's configuration."""
        config = str(self.data / "mesh" / "haproxy.cfg").encode()
        masters = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parent = Path(f"/proc/{ppid}/cmdline").read_bytes() if ppid > 1 else b""
            except (OSError, IndexError, ValueError):
                continue
            if b"haproxy" in cmdline and config in cmdline and b"haproxy" not in parent:
                masters.append(int(entry.name))
        return masters

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        destroy_root(self.cgroup_root)
        for pid in self.haproxy_masters():
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        d.close()


def set_depth(tmp: Path, value: str) -> None:
    """The gauge the tasks serve: written whole (a rename), readable by their dynamic user."""
    part = tmp / "depth.part"
    part.write_text(value + "\n")
    part.chmod(0o644)
    part.replace(tmp / "depth")


def test_a_gauge_above_its_target_scales_the_service_up(daemon: Daemon) -> None:
    tmp = daemon.tmp
    set_depth(tmp, "4")  # 4 + 1 (the second label set) = 5, below the target of 10
    (tmp / "gauge.yaml").write_text(SPEC)
    daemon.start()
    daemon.cli("apply", str(tmp / "gauge.yaml"), "--wait")
    c = daemon.client()
    log = daemon.log

    def worker() -> dict[str, Any]:
        return next(s for s in c.services() if s["name"] == "worker")

    def gauge_value() -> Any:
        a = worker().get("autoscale") or {}
        return a.get("metrics", [{}])[0].get("value") if a.get("at") else None

    # the agent reads the gauge (both label sets summed) and the autoscaler sees it
    wait_for(lambda: gauge_value() == 5.0, 60, "the autoscaler to read queue_depth 5", log)
    assert worker()["desired"] == 1  # 5 of a target of 10: one replica is enough
    (alloc_id,) = [a["id"] for a in c.call("GET", "/v1/allocations") if a["workload"] == "worker"]
    live = c.service_metrics("gauge", "worker", 5)["replicas"][alloc_id]
    assert live["gauges"]["queue_depth"]["current"] == 5.0

    set_depth(tmp, "34")  # 35 per replica, target 10: ceil(1 × 35 / 10) = 4 → max 3
    wait_for(lambda: worker()["desired"] == 3, 60, "a scale-up to 3 replicas", log)

    def running() -> list[dict[str, Any]]:
        allocs = c.call("GET", "/v1/allocations")
        return [a for a in allocs if a["workload"] == "worker" and a["status"] == "running"]

    wait_for(lambda: len(running()) == 3, 60, "3 replicas running", log)
    out = json.loads(daemon.cli("events", "--service", "worker", "--json", "--limit", "0"))
    ups = [e for e in out if e["type"] == "service.autoscaled"]
    assert ups, out
    up = ups[0]
    assert up["message"].startswith("scale up 1 → 3"), up
    assert "queue_depth 35 (target 10)" in up["message"], up
    (m,) = up["data"]["metrics"]
    assert (m["metric"], m["kind"], m["value"], m["target"]) == ("queue_depth", "app", 35.0, 10)
    assert up["data"]["desired"] == 3 and up["data"]["limit"] == "max"

    # ps and top show the metric's value against its target
    wait_for(lambda: gauge_value() == 35.0, 60, "the three replicas' average", log)
    ps = daemon.cli("ps")
    assert "queue_depth 35 (10)" in ps, ps
    top = daemon.cli("top", "--once")
    assert "APP METRICS" in top and "queue_depth 35 (10)" in top, top
    tops = json.loads(daemon.cli("top", "--json"))
    assert any(a.get("live", {}).get("gauges") == {"queue_depth": 35.0} for a in tops), tops

    # a page the agent cannot parse: the gauge is left out, the count stays, the log says why
    set_depth(tmp, "lots")
    wait_for(lambda: gauge_value() is None, 60, "the gauge to be left out", log)
    assert worker()["desired"] == 3
    text = wait_for(
        lambda: (
            "application gauges left out" in log.read_text(errors="replace")
            and log.read_text(errors="replace")
        ),
        30,
        "the agent to say why",
        log,
    )
    assert "the value of queue_depth: 'lots' is not a number" in text
    c.close()


def spec_with(metrics: str) -> str:
    """The worker of ``SPEC`` autoscaled on ``metrics`` (a YAML flow list): one version
    whatever they are (``autoscale:`` makes no new one)."""
    head, _ = SPEC.split("      metrics:")
    return f"{head}      metrics: {metrics}\n"


def test_a_gauge_added_to_a_running_service_is_read_without_a_restart(daemon: Daemon) -> None:
    """``apply`` adds the gauge (then changes its path) on a running service: no new version,
    no new instance, and the agent is not restarted; its agent reads the current spec."""
    tmp = daemon.tmp
    set_depth(tmp, "34")  # 35 per replica: 3 replicas (max) once the gauge is read
    spec = tmp / "gauge.yaml"
    spec.write_text(spec_with("[{cpu: 90%}]"))
    daemon.start()
    assert daemon.proc is not None
    daemon_pid = daemon.proc.pid
    daemon.cli("apply", str(spec), "--wait")
    c = daemon.client()
    log = daemon.log

    def worker() -> dict[str, Any]:
        return next(s for s in c.services() if s["name"] == "worker")

    def gauge() -> dict[str, Any] | None:
        a = worker().get("autoscale") or {}
        found = [m for m in a.get("metrics", []) if m["metric"] == "queue_depth"]
        return found[0] if a.get("at") and found else None

    def first() -> dict[str, Any]:
        allocs = c.call("GET", "/v1/allocations")
        return next(a for a in allocs if a["workload"] == "worker" and a["index"] == 0)

    # the autoscaler decides on cpu alone: one replica
    wait_for(lambda: (worker().get("autoscale") or {}).get("at"), 60, "a decision", log)
    before = wait_for(lambda: (a := first())["pid"] and a, 30, "the first replica's pid", log)
    assert worker()["desired"] == 1

    # the gauge added by apply: the same version and instance, read by the running agent
    spec.write_text(
        spec_with("[{cpu: 90%}, {metric: queue_depth, target: 10, port: metrics, path: /metrics}]")
    )
    out = daemon.cli("apply", str(spec), "--wait")
    assert "configure" in out, out
    wait_for(lambda: (g := gauge()) and g["value"] == 35.0, 60, "the added gauge's value", log)
    wait_for(lambda: worker()["desired"] == 3, 60, "a scale-up to 3 replicas", log)
    now = first()
    assert (now["id"], now["pid"], now["spec_version"], now["status"]) == (
        before["id"],
        before["pid"],
        before["spec_version"],
        "running",
    )

    # its path changed by apply: a page the instances do not serve, the gauge left out
    spec.write_text(
        spec_with("[{cpu: 90%}, {metric: queue_depth, target: 10, port: metrics, path: /nope}]")
    )
    daemon.cli("apply", str(spec), "--wait")
    wait_for(lambda: (g := gauge()) and g["value"] is None, 60, "the gauge to be left out", log)
    wait_for(lambda: "/nope: HTTP 404" in log.read_text(errors="replace"), 30, "the reason", log)
    assert first()["pid"] == before["pid"]
    assert daemon.proc.poll() is None and daemon.proc.pid == daemon_pid  # never restarted
    c.close()
