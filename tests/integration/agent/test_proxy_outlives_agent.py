"""The node's HAProxy outlives its agent while instances run (issue #10, item 8), and an agent
that must stop on an internal error says so (item 3).

A real ``elastin daemon`` (server + agent), or an ``elastin server`` and an ``elastin
agent``, run a service and a caller with an upstream; the agent is stopped with SIGTERM, then
killed with SIGKILL: each time the instances and HAProxy keep running and the caller's
upstream listener keeps answering through HAProxy; a new agent adopts that HAProxy (the same
master, reloaded, never a second one). Requests sent all along never fail. Once the
application is deleted (no instance left), stopping the agent stops HAProxy (the daemon
stopped it while instances ran; ``elastin agent`` never stopped it). An agent that cannot run
exits non-zero with a line that says why and where (the daemon exited 0, silently)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from elastin.agent.drivers.cgroups import destroy_root
from elastin.client.http import Client
from elastin.mesh.haproxy.process import haproxy_binary
from elastin.testing.programs import ECHO_ALLOC_ID

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed"),
]

PY = sys.executable
API = ECHO_ALLOC_ID
SPEC = f"""
app: m
services:
  api:
    command: ["{PY}", "-c", {json.dumps(API)}]
    ports: {{http: 0}}
    resources: {{cpu: 100m, memory: 48Mi}}
    health: {{http: /, interval: 1s}}
  web:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    upstreams: [api]
    resources: {{cpu: 50m, memory: 32Mi}}
"""

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float, what: str, log: Path | None = None) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
        except Exception as e:  # transient while processes restart
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{tail}")


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Node:
    """A data directory, a cgroup root and what runs on them: ``elastin daemon`` (server and
    agent in one process), or with ``split`` an ``elastin server`` and an ``elastin agent``
    (``start`` and ``stop`` then start and stop the agent alone)."""

    def __init__(self, tmp: Path, split: bool = False) -> None:
        self.split = split
        self.server: subprocess.Popen[bytes] | None = None
        self.tmp = tmp
        tmp.chmod(0o755)  # the spec's directory, the tasks' workdir: readable, as a project's
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
        self.daemon: subprocess.Popen[bytes] | None = None

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            return subprocess.Popen(
                [PY, "-m", "elastin.cli.main", *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self) -> subprocess.Popen[bytes]:
        """Start the daemon, or the agent (and the server first, once) with ``split``."""
        if self.split and self.server is not None:
            self.daemon = self._spawn("agent")
            return self.daemon
        (self.data / "server.json").unlink(missing_ok=True)
        self.daemon = self._spawn("server" if self.split else "daemon", "--port", "0")
        serving = self.daemon

        def listening() -> bool:
            assert serving.poll() is None, "it exited"
            info = json.loads((self.data / "server.json").read_text())
            return bool(info["pid"] == serving.pid)

        wait_for(listening, 30, "the server", self.log)
        if self.split:
            self.server, self.daemon = self.daemon, self._spawn("agent")
        return self.daemon

    def stop(self, sig: int) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        return self.daemon.wait(60)

    def client(self) -> Client:
        info = json.loads((self.data / "server.json").read_text())
        return Client(info["url"], (self.data / "token").read_text().strip())

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "elastin.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )

    def haproxy_pid(self) -> int:
        return int((self.data / "mesh" / "haproxy.pid").read_text().split()[0])

    def haproxy_masters(self) -> list[int]:
        """HAProxy masters running this node's configuration (a master's parent is no
        haproxy; its workers' is)."""
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
            mine = b"haproxy" in cmdline and config in cmdline and b"haproxy" not in parent
            if mine and pid_alive(int(entry.name)):
                masters.append(int(entry.name))
        return masters

    def agent_metrics(self) -> dict[str, float]:
        with self.client() as c:
            (node,) = c.nodes()
        where = dict(node["attributes"])["agent.metrics"]
        with urllib.request.urlopen(f"http://{where}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("elastin_agent_mesh_"):
                name, value = line.split(" ", 1)
                out[name] = float(value)
        return out

    def close(self) -> None:
        for proc in (self.daemon, self.server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
        destroy_root(self.cgroup_root)
        for pid in self.haproxy_masters():
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture(params=["daemon", "server+agent"])
def node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Node]:
    n = Node(tmp_path, split=request.param == "server+agent")
    try:
        yield n
    finally:
        n.close()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


class Caller(threading.Thread):
    """Calls ``url`` over and over until ``stop``; counts the answers and keeps the errors."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.halt = threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                get(self.url)
                self.ok += 1
            except Exception as e:
                self.errors.append(repr(e))
            time.sleep(0.02)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


def test_haproxy_outlives_a_stopped_or_killed_agent_and_the_next_one_adopts_it(
    node: Node,
) -> None:
    node.start()
    spec = node.tmp / "m.yaml"
    spec.write_text(SPEC)
    applied = node.cli("apply", str(spec), "--wait")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    with node.client() as c:
        web = wait_for(
            lambda: [
                a for a in c.allocations(app="m") if a.workload == "web" and a.status == "running"
            ],
            30,
            "web running",
            node.log,
        )[0]
        (api,) = [
            a for a in c.allocations(app="m") if a.workload == "api" and a.status == "running"
        ]
    url = f"http://127.0.0.1:{dict(web.ports)['upstream.api']}/"
    wait_for(lambda: get(url) == api.id, 30, "a call through the mesh", node.log)
    master = node.haproxy_pid()
    assert node.haproxy_masters() == [master]

    caller = Caller(url)
    caller.start()
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            code = node.stop(sig)
            assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), node.log.read_text()
            # the agent is gone; its instances and the node's HAProxy are not
            assert pid_alive(master), f"HAProxy stopped with the agent ({signal.Signals(sig).name})"
            assert get(url) == api.id
            calls = caller.ok
            wait_for(lambda n=calls: caller.ok > n + 10, 30, "calls without an agent")  # type: ignore[misc]
            # a new agent adopts it: the same master, reloaded with the agent's snapshot
            node.start()
            wait_for(
                lambda: node.agent_metrics().get("elastin_agent_mesh_reloads_total", 0) >= 1,
                60,
                "the new agent reloading the running HAProxy",
                node.log,
            )
            assert node.agent_metrics()["elastin_agent_mesh_starts_total"] == 0
            assert node.haproxy_masters() == [master]
            assert get(url) == api.id
    finally:
        caller.stop()
    assert caller.ok > 0
    assert caller.errors == []  # no gap on the listener, at any point

    # nothing runs any more: stopping the agent stops HAProxy
    with node.client() as c:
        c.delete_app("m")
        wait_for(
            lambda: not [a for a in c.allocations(app="m") if not a.terminal],
            60,
            "the instances stopped",
            node.log,
        )
    handles = node.data / "agent" / "handles"
    wait_for(lambda: not list(handles.glob("*.json")), 30, "the handles forgotten", node.log)
    assert node.stop(signal.SIGTERM) == 0
    assert not pid_alive(master)
    assert node.haproxy_masters() == []


def test_an_agent_that_cannot_run_exits_non_zero_and_says_why(node: Node) -> None:
    node.data.mkdir(parents=True)
    (node.data / "allocs").write_text("a file where the agent keeps its instances' directories")
    if node.split:
        proc = node.start()  # the server, then the agent
    else:
        proc = node.daemon = node._spawn("daemon", "--port", "0")
    code = proc.wait(60)
    log = node.log.read_text()
    assert code == 1, log
    assert "the agent cannot run" in log  # the agent's log line
    assert f"File exists: {node.data / 'allocs'}" in log  # the command's: what and where
    assert "Traceback" not in log
