"""One bad application never stops the node's other applications or its proxy (issue #10,
item 3), with a real server, agent, task driver and HAProxy in this process
(``run_embedded``, as ``elastin up`` runs them).

Three applications with a service and a caller each: ``good`` is fine; ``bad``'s mesh part
cannot be rendered (the renderer is made to fail on its cluster); ``boom``'s allocations make
the agent fail while it prepares them (the spec lookup is made to raise, as data the agent
cannot decode would). ``bad`` is left out of the proxy with an error event on its
allocations, ``boom``'s allocations are failed with the reason and an error event, and
``good``'s caller keeps reaching its service through HAProxy all along; the agent runs on."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest
from meshproxy import get, needs_haproxy

import elastin.mesh.haproxy.render as render_mod
from elastin.agent.agent import Agent
from elastin.agent.drivers.cgroups import destroy_root
from elastin.cli.embedded import run_embedded
from elastin.client.http import Client
from elastin.mesh.model import Cluster
from elastin.model.cluster import Allocation
from elastin.model.workload import Workload
from elastin.testing.programs import ECHO_ALLOC_ID
from elastin.testing.waiting import wait_for

pytestmark = [
    needs_haproxy,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

PY = sys.executable
API = ECHO_ALLOC_ID


def spec(app: str) -> str:
    return f"""
app: {app}
services:
  api:
    command: ["{PY}", "-c", {json.dumps(API)}]
    ports: {{http: 0}}
    resources: {{cpu: 50m, memory: 48Mi}}
  web:
    command: ["{PY}", "-c", "import time; time.sleep(600)"]
    upstreams: [api]
    resources: {{cpu: 50m, memory: 32Mi}}
"""


def running(c: Client, app: str, workload: str) -> list[Allocation]:
    return [
        a
        for a in c.allocations(app=app, all=True)
        if a.workload == workload and a.status == "running"
    ]


def events_of(c: Client, app: str) -> list[dict[str, Any]]:
    return [e for e in c.events(limit=1000) if str(e.get("subject", "")).startswith(f"{app}.")]


async def test_one_bad_app_leaves_the_others_and_the_proxy_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cgroup_root = f"elastin-test-{secrets.token_hex(4)}"
    monkeypatch.setenv("ELASTIN_CGROUP_ROOT", cgroup_root)
    monkeypatch.setenv("PATH", f"{Path(PY).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    backend = render_mod._backend

    def failing_backend(c: Cluster) -> list[str]:
        if c.name.startswith("bad."):
            raise ValueError("a policy the renderer cannot express")
        return backend(c)

    monkeypatch.setattr(render_mod, "_backend", failing_backend)
    workload = Agent.workload

    async def failing_workload(self: Agent, alloc: Allocation) -> Workload | None:
        if alloc.app == "boom":
            raise KeyError("resources")
        return await workload(self, alloc)

    monkeypatch.setattr(Agent, "workload", failing_workload)
    failures: list[BaseException] = []

    async def main(url: str, token: str, agent: Agent, shutdown: asyncio.Event) -> None:
        try:
            await check(Client(url, token), agent)
        except BaseException as e:
            failures.append(e)
        finally:
            shutdown.set()

    async def check(c: Client, agent: Agent) -> None:
        # ``c`` blocks: every call goes through a thread (the server runs on this loop)
        for app in ("good", "bad", "boom"):
            await asyncio.to_thread(c.apply, spec(app))
        web = (await wait_for(lambda: running(c, "good", "web"), 60, "good's caller"))[0]
        api = (await wait_for(lambda: running(c, "good", "api"), 60, "good's service"))[0]
        url = f"http://127.0.0.1:{dict(web.ports)['upstream.api']}/"
        await wait_for(lambda: get(url) == (200, api.id), 30, "good through the mesh")
        # bad runs but is out of the proxy, and says so on its allocations
        await wait_for(lambda: running(c, "bad", "web"), 60, "bad's caller")
        assert agent.mesh is not None
        assert agent.mesh.left_out == {"bad": "ValueError: a policy the renderer cannot express"}
        config = (agent.cfg.data_dir / "mesh" / "haproxy.cfg").read_text()
        assert "c_good.api.http" in config and "c_bad." not in config
        left_out = await wait_for(
            lambda: [e for e in events_of(c, "bad") if e["type"] == "mesh.left_out"],
            30,
            "bad's mesh.left_out events",
        )
        assert all(e["level"] == "error" for e in left_out)
        # boom's allocations failed with the reason, and an error event each
        boom = await wait_for(
            lambda: [a for a in c.allocations(app="boom", all=True) if a.status == "failed"],
            30,
            "boom failed",
        )
        assert all("agent error" in a.reason and "KeyError" in a.reason for a in boom)
        errors = [
            e
            for e in await asyncio.to_thread(events_of, c, "boom")
            if e["type"] == "alloc.agent_error"
        ]
        assert errors and all(e["level"] == "error" for e in errors)
        # the node's proxy and good are untouched: good keeps answering through HAProxy
        assert agent.mesh.proxy is not None and agent.mesh.proxy.alive()
        for _ in range(20):
            assert await asyncio.to_thread(get, url) == (200, api.id)
        still = await asyncio.to_thread(running, c, "good", "api")
        assert [a.id for a in still] == [api.id]  # the same instance (its usage moves on)

    try:
        await run_embedded(tmp_path / "data", port=0, main=main, stop_workloads=True)
    finally:
        destroy_root(cgroup_root)
        pid_file = tmp_path / "data" / "mesh" / "haproxy.pid"
        if pid_file.exists():  # stop_workloads stops it; a failed run may not have
            with_pid = int(pid_file.read_text().split()[0])
            if Path(f"/proc/{with_pid}").exists():
                os.kill(with_pid, 15)
    if failures:
        raise failures[0]
