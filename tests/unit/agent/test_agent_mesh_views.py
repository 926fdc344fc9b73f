"""What the agent derives from the mesh snapshot its proxy serves: DNS answers, and the
drain step a runner takes before it stops a service instance."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from elastin.agent.agent import Agent, AgentConfig
from elastin.mesh.dns import Target
from elastin.mesh.haproxy.stats import InFlight
from elastin.mesh.model import Cluster, Endpoint, MeshSnapshot
from elastin.model.cluster import Allocation
from elastin.testing import FakeClock
from elastin.testing.fake_driver import FakeDriver


def agent(tmp: Path) -> Agent:
    cfg = AgentConfig(data_dir=tmp, server_url="http://127.0.0.1:9", token="t", mesh=False)
    return Agent(cfg, {"task": FakeDriver()}, clock=FakeClock(autojump=True))


def test_dns_answers_from_the_snapshot_the_proxy_serves(tmp_path: Path) -> None:
    a = agent(tmp_path)
    assert a.dns_lookup("api", None, None) is None  # no snapshot yet: nothing is known
    snap = MeshSnapshot(
        3,
        "n1",
        (),
        (
            Cluster(
                "shop.api.http",
                endpoints=(
                    Endpoint("a1-http", "10.0.0.1", 8080, node="n1"),
                    Endpoint("a2-http", "10.0.0.2", 8080, node="n2", ready=False),
                ),
            ),
            Cluster("shop.api.admin", endpoints=(Endpoint("a1-admin", "10.0.0.1", 9090),)),
            Cluster("other.api.http", endpoints=(Endpoint("o1-http", "10.0.0.9", 80),)),
        ),
    )
    a.mesh = SimpleNamespace(current=snap)  # type: ignore[assignment]
    # the first port of every app's "api", ready endpoints only
    assert a.dns_lookup("api", "shop", None) == [Target("10.0.0.1", 8080, "n1")]
    assert a.dns_lookup("api", "shop", "admin") == [Target("10.0.0.1", 9090, "")]
    assert {t.address for t in a.dns_lookup("api", None, None) or []} == {
        "10.0.0.1",
        "10.0.0.9",
    }
    assert a.dns_lookup("api", "shop", "grpc") is None
    assert a.dns_lookup("db", None, None) is None


async def test_drain_says_what_happened(tmp_path: Path) -> None:
    a = agent(tmp_path)
    calls: list[tuple[int, float]] = []

    async def converged(version: int, wait: float) -> list[str]:
        calls.append((version, wait))
        return ["n2"] if version > 10 else []

    a.client = SimpleNamespace(mesh_converged=converged)  # type: ignore[assignment]
    alloc = Allocation(id="x1", app="shop", workload="api", index=0)
    assert "out of every proxy" in await a.drain(alloc, 7, 10.0)
    late = await a.drain(alloc, 11, 10.0)
    assert "n2" in late and "did not confirm" in late
    assert [v for v, _ in calls] == [7, 11]
    busy: dict[str, Any] = {"n": 2}

    async def in_flight(
        _: str, deadline: float | None = None, since: float | None = None
    ) -> InFlight:
        busy["n"] -= 1
        return InFlight(requests=max(0, busy["n"]))

    a.mesh = SimpleNamespace(in_flight=in_flight)  # type: ignore[assignment]
    assert "no request in flight" in await asyncio.wait_for(a.drain(alloc, 7, 10.0), 5)
