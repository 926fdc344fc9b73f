"""The agent follows ``autoscale:`` changes applied to a running service (no new version, no
new instance): which applications it fetches again (``apps_to_refresh``, pure), the refresh
itself against a scripted server (after the node's mesh version moved, bounded, failures
included), and the application gauges read with the service's current policy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agent_support import offline_agent

from elastin.agent.agent import (
    APP_REFRESH,
    APP_REFRESH_NO_MESH,
    Agent,
    CachedApp,
    apps_to_refresh,
)
from elastin.agent.runner import AllocRunner
from elastin.agent.sampling import Page, gauge_pages
from elastin.client.errors import ServerUnavailable
from elastin.mesh.model import MeshSnapshot
from elastin.model.cluster import Allocation
from elastin.model.codec import to_data
from elastin.model.workload import Application, Autoscale, MetricTarget, Port, Workload

GAUGE = MetricTarget("app", 10, name="queue_depth", port="metrics", path="/metrics")
CPU_ONLY = Workload(
    name="api",
    command=("x",),
    ports=(Port("http"), Port("metrics")),
    autoscale=Autoscale(min=1, max=3, metrics=(MetricTarget("cpu", 0.9),)),
)
WITH_GAUGE = replace(
    CPU_ONLY, autoscale=Autoscale(min=1, max=3, metrics=(MetricTarget("cpu", 0.9), GAUGE))
)
ALLOC = Allocation(id="a1", app="shop", workload="api", index=0, node_id="n1", spec_version=1)


class Server:
    """``GET /v1/apps/shop`` as applied now; counts the calls, or fails when told."""

    def __init__(self, w: Workload, version: int = 1) -> None:
        self.set(w, version)
        self.calls = 0
        self.down = False

    def set(self, w: Workload, version: int = 1) -> None:
        self.record = {"app": to_data(Application("shop", (w,))), "versions": {"api": version}}

    async def call(self, method: str, path: str, timeout: float | None = None, **kw: Any) -> Any:
        assert (method, path) == ("GET", "/v1/apps/shop")
        self.calls += 1
        if self.down:
            raise ServerUnavailable("cannot reach the Elastin server")
        return self.record


def with_mesh(agent: Agent, version: int) -> None:
    """The node's mesh manager as the agent reads it: its proxy serves ``version``."""
    agent.mesh = SimpleNamespace(  # type: ignore[assignment]
        proxy=object(), current=MeshSnapshot(version=version)
    )


async def running(agent: Agent, server: Server, alloc: Allocation = ALLOC) -> AllocRunner:
    """A runner of ``alloc`` as ``sync`` makes it: its workload fetched at its start."""
    agent.client = server  # type: ignore[assignment]
    runner = agent._runner(alloc, await agent.workload(alloc))
    runner.ports = {"http": 9000, "metrics": 9100}
    agent.runners[alloc.id] = runner
    return runner


def pages(agent: Agent, runner: AllocRunner) -> tuple[Page, ...]:
    return gauge_pages(agent._gauge_workload(runner), runner.ports)


def cached(fetched: float, mesh_version: int | None) -> CachedApp:
    return CachedApp(Application("shop", (CPU_ONLY,)), {"api": 1}, fetched, mesh_version)


def test_which_applications_are_fetched_again() -> None:
    now = 1000.0
    old = now - APP_REFRESH
    apps = {"shop": cached(old, 7), "blog": cached(old, 7)}
    tried = {"shop": old, "blog": old}
    # with a mesh feed: only once the node's mesh version moved past the fetch
    assert apps_to_refresh(["shop", "blog"], apps, tried, 7, now) == []
    assert apps_to_refresh(["shop", "blog", "shop"], apps, tried, 8, now) == ["blog", "shop"]
    assert apps_to_refresh(["shop"], apps, tried, 8, now) == ["shop"]  # only those wanted
    assert apps_to_refresh(["shop"], {"shop": cached(old, None)}, tried, 8, now) == ["shop"]
    # never twice within APP_REFRESH, a failed fetch included
    assert apps_to_refresh(["shop"], apps, {"shop": now - 1}, 8, now) == []
    assert apps_to_refresh(["new"], {}, {"new": now - 1}, 8, now) == []
    assert apps_to_refresh(["new"], {}, {}, None, now) == ["new"]  # not cached: due
    # without a mesh feed: every APP_REFRESH_NO_MESH seconds
    assert apps_to_refresh(["shop"], apps, tried, None, now) == []
    late = now + APP_REFRESH_NO_MESH
    assert apps_to_refresh(["shop"], apps, tried, None, late) == ["shop"]
    # a mesh version that went back (another store): another version, fetched again
    assert apps_to_refresh(["shop"], apps, tried, 3, now) == ["shop"]


async def test_a_gauge_applied_to_a_running_service_is_read_once_the_mesh_moves(
    tmp_path: Path,
) -> None:
    agent = offline_agent(tmp_path)
    clock = agent.clock
    server = Server(CPU_ONLY)
    with_mesh(agent, 7)
    runner = await running(agent, server)
    assert server.calls == 1 and pages(agent, runner) == ()

    server.set(WITH_GAUGE)  # `elastin apply`: the same version, no new instance
    clock.advance(60)  # type: ignore[attr-defined]
    assert await agent.refresh_apps() == [] and server.calls == 1  # the mesh is quiet: no call
    with_mesh(agent, 9)  # the apply's commit moved the mesh version
    assert await agent.refresh_apps() == ["shop"] and server.calls == 2
    assert pages(agent, runner) == (Page(9100, "/metrics", ("queue_depth",)),)

    # its path changed: read at once after the next fetch, never two within APP_REFRESH
    server.set(
        replace(
            WITH_GAUGE, autoscale=Autoscale(min=1, max=3, metrics=(replace(GAUGE, path="/other"),))
        )
    )
    with_mesh(agent, 10)
    assert await agent.refresh_apps() == [] and server.calls == 2
    clock.advance(APP_REFRESH)  # type: ignore[attr-defined]
    assert await agent.refresh_apps() == ["shop"] and server.calls == 3
    assert pages(agent, runner) == (Page(9100, "/other", ("queue_depth",)),)
    assert runner.workload == CPU_ONLY  # the runner's own copy: its version, as it started


async def test_a_failed_fetch_is_tried_again_later_and_forgotten_apps_are_dropped(
    tmp_path: Path,
) -> None:
    agent = offline_agent(tmp_path)  # no mesh feed: every APP_REFRESH_NO_MESH seconds
    clock = agent.clock
    server = Server(CPU_ONLY)
    runner = await running(agent, server)
    server.set(WITH_GAUGE)
    server.down = True
    clock.advance(APP_REFRESH_NO_MESH)  # type: ignore[attr-defined]
    assert await agent.refresh_apps() == [] and server.calls == 2
    assert await agent.refresh_apps() == [] and server.calls == 2  # not again at once
    assert pages(agent, runner) == ()  # what it had stays
    server.down = False
    clock.advance(APP_REFRESH)  # type: ignore[attr-defined]
    assert await agent.refresh_apps() == ["shop"] and server.calls == 3
    assert pages(agent, runner) != ()
    runner.done.set()  # a finished instance: its application is not fetched for it
    clock.advance(APP_REFRESH_NO_MESH)  # type: ignore[attr-defined]
    assert await agent.refresh_apps() == [] and server.calls == 3
    del agent.runners[ALLOC.id]  # forgotten: so is its application
    await agent.refresh_apps()
    assert agent._apps == {} and agent._app_tried == {}


async def test_the_gauges_follow_the_current_policy_on_an_older_version(tmp_path: Path) -> None:
    """An instance of version 1 while version 2 is current (a rollout, an undo): the policy
    is the service's, the port the instance's own."""
    agent = offline_agent(tmp_path)
    server = Server(CPU_ONLY)
    runner = await running(agent, server)
    server.set(WITH_GAUGE, version=2)
    newer = replace(ALLOC, id="a2", index=1, spec_version=2)
    await running(agent, server, newer)  # fetched the current record (version 2)
    assert pages(agent, runner) == (Page(9100, "/metrics", ("queue_depth",)),)
    runner.ports = {"http": 9000}  # its version has no such port: nothing to read
    assert pages(agent, runner) == ()
