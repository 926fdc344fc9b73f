"""What the agent makes sure of before it starts an instance (issue #11, items 4 and 8), with a
real server, agent, task driver and HAProxy in this process (``run_embedded``, as ``elastin
up`` runs them):

* a job whose first action is calling its upstream succeeds on its first attempt (it used to
  fail with "connection refused": it started before the node's proxy listened on its
  upstream listener). The proxy is made slow to take a new configuration (each start and
  reload waits ``SLOW_PROXY`` s first, as on a loaded node), so the race is always lost
  without the wait;
* a service whose fixed port another process holds (a socket of this test) fails at once,
  with the port and who holds it (this process' pid and command), and is not restarted in a
  loop."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sys
from pathlib import Path

import pytest

from elastin.agent.agent import Agent
from elastin.agent.drivers.cgroups import destroy_root
from elastin.cli.embedded import run_embedded
from elastin.client.http import Client
from elastin.mesh.haproxy.process import HaproxyProcess, haproxy_binary
from elastin.model.cluster import Allocation
from elastin.testing.programs import ECHO_ALLOC_ID
from elastin.testing.waiting import wait_for

pytestmark = [
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

PY = sys.executable
SLOW_PROXY = 2.0  # seconds each start or reload of the node's proxy is held back
# the job's first action: call its upstream through its own listener on the node's proxy
CALL = (
    "import os, urllib.request\n"
    "url = os.environ['ELASTIN_UPSTREAM_API_URL']\n"
    "print(urllib.request.urlopen(url, timeout=10).read().decode())\n"
)


def spec(held_port: int) -> str:
    return f"""
app: st
services:
  api:
    command: ["{PY}", "-c", {json.dumps(ECHO_ALLOC_ID)}]
    ports: {{http: 0}}
    resources: {{cpu: 50m, memory: 48Mi}}
    health: {{http: /, interval: 1s}}
  fixed:
    command: ["{PY}", "-m", "http.server", "{held_port}", "--bind", "127.0.0.1"]
    ports: {{http: {held_port}}}
    resources: {{cpu: 50m, memory: 32Mi}}
jobs:
  caller:
    command: ["{PY}", "-c", {json.dumps(CALL)}]
    depends_on: [api]
    upstreams: [api]
    retries: 0
    resources: {{cpu: 50m, memory: 32Mi}}
"""


def allocs(c: Client, workload: str) -> list[Allocation]:
    return [a for a in c.allocations(app="st", all=True) if a.workload == workload]


def finished(c: Client, workload: str) -> list[Allocation]:
    found = allocs(c, workload)
    return found if found and all(a.terminal for a in found) else []


async def test_upstreams_up_before_a_job_starts_and_a_held_fixed_port_fails_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cgroup_root = f"elastin-test-{secrets.token_hex(4)}"
    monkeypatch.setenv("ELASTIN_CGROUP_ROOT", cgroup_root)
    monkeypatch.setenv("PATH", f"{Path(PY).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    load = HaproxyProcess.load

    async def slow_load(self: HaproxyProcess, text: str) -> str:
        await asyncio.sleep(SLOW_PROXY)  # a loaded node: the proxy is slow to take it
        return await load(self, text)

    monkeypatch.setattr(HaproxyProcess, "load", slow_load)
    holder = socket.socket()  # another process' server on the service's fixed port
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    held = int(holder.getsockname()[1])
    failures: list[BaseException] = []

    async def main(url: str, token: str, agent: Agent, shutdown: asyncio.Event) -> None:
        try:
            await check(Client(url, token))
        except BaseException as e:
            failures.append(e)
        finally:
            shutdown.set()

    async def check(c: Client) -> None:
        await asyncio.to_thread(c.apply, spec(held))
        # the job called its upstream at once: it succeeded the first time
        runs = await wait_for(lambda: finished(c, "caller"), 90, "the job's run")
        assert [(a.status, a.exit_code) for a in runs] == [("complete", 0)], [
            (a.status, a.reason) for a in runs
        ]
        api = (await wait_for(lambda: allocs(c, "api"), 5, "api"))[0]
        log = Path(tmp_path / "data" / "allocs" / runs[0].id / "logs" / "stdout.log")
        # the answer came through the mesh (the last word: lines may carry a timestamp)
        assert log.read_text().split()[-1] == api.id
        # the fixed port: failed once, naming the port and who holds it
        fixed = await wait_for(
            lambda: [a for a in allocs(c, "fixed") if a.status == "failed"], 60, "fixed failed"
        )
        a = fixed[0]
        assert f"port {held} (http) is already in use by pid {os.getpid()} (" in a.reason
        assert a.restarts == 0 and a.pid == 0
        events = [
            e
            for e in await asyncio.to_thread(c.events, 0, 1000)
            if e["type"] == "alloc.start_failed" and str(held) in e["message"]
        ]
        assert events and events[0]["level"] == "error"

    try:
        await run_embedded(tmp_path / "data", port=0, main=main, stop_workloads=True)
    finally:
        holder.close()
        destroy_root(cgroup_root)
        pid_file = tmp_path / "data" / "mesh" / "haproxy.pid"
        if pid_file.exists():  # stop_workloads stops it; a failed run may not have
            pid = int(pid_file.read_text().split()[0])
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, 15)
    if failures:
        raise failures[0]
