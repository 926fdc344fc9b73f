"""The mesh manager's apply path on a ``FakeProxy``: the first snapshot starts the proxy,
endpoint churn goes through runtime commands (no reload), a structural change reloads, a
refused runtime command falls back to a reload, a dead proxy is started again, deletions of
drained servers are retried, a version is acknowledged only when the server wants it, and
in-flight requests are counted from ``show stat``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from elastin.agent.mesh import IN_FLIGHT_FRESH, STATS_COMMAND, MeshManager
from elastin.clock import yield_now
from elastin.mesh.haproxy.stats import InFlight
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot
from elastin.testing import FakeClock, FakeProxy

LST = (Listener("caller.web", 18080, "shop.web.http"),)
E1 = Endpoint("a1-http", "127.0.0.1", 9001)
E2 = Endpoint("a2-http", "127.0.0.1", 9002)


def snap(version: int, *endpoints: Endpoint, ack: bool = False) -> MeshSnapshot:
    cluster = Cluster("shop.web.http", endpoints=endpoints)
    return MeshSnapshot(version, "n1", LST, (cluster,), ack_wanted=ack)


class FakeServer:
    """The server's side of the snapshot stream: ``push`` a snapshot; acks are recorded."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[MeshSnapshot] = asyncio.Queue()
        self.acks: list[int] = []

    async def mesh_stream(self, node_id: str, quiet: float = 60.0) -> AsyncIterator[MeshSnapshot]:
        while True:
            yield await self.queue.get()

    async def mesh_ack(self, node_id: str, version: int) -> None:
        self.acks.append(version)


def manager(tmp: Path, proxy: FakeProxy, server: FakeServer | None = None) -> MeshManager:
    s = server or FakeServer()
    return MeshManager(lambda: s, "n1", tmp / "mesh", proxy, clock=FakeClock())


async def test_the_first_snapshot_starts_the_proxy_with_its_config(tmp_path: Path) -> None:
    proxy = FakeProxy()
    m = manager(tmp_path, proxy)
    assert await m.apply(snap(1, E1)) == "started"
    assert proxy.starts == 1 and proxy.reloads == 0 and proxy.commands == []
    assert "e_a1-http" in proxy.configs[0]
    assert f":{m.exporter_port}" in proxy.configs[0]  # the node's exporter port is kept
    assert m.current is not None and m.current.version == 1


async def test_nothing_to_serve_does_not_start_a_proxy(tmp_path: Path) -> None:
    proxy = FakeProxy()
    m = manager(tmp_path, proxy)
    assert await m.apply(MeshSnapshot(1, "n1")) == "idle"
    assert proxy.starts == 0 and m.current is not None


async def test_endpoint_churn_goes_through_runtime_commands(tmp_path: Path) -> None:
    proxy = FakeProxy()
    m = manager(tmp_path, proxy)
    await m.apply(snap(1, E1))
    assert await m.apply(snap(2, E1, E2)) == "updated"
    assert any(c.startswith("add server c_shop.web.http/e_a2-http") for c in proxy.commands)
    assert await m.apply(snap(3, E2)) == "updated"
    assert "set server c_shop.web.http/e_a1-http state maint" in proxy.commands
    assert m.pending_deletes == ["del server c_shop.web.http/e_a1-http"]  # after the drain
    assert await m.apply(snap(4, E2)) == "unchanged"
    assert proxy.reloads == 0 and len(proxy.configs) == 1
    assert m.runtime_commands == len(proxy.commands)


async def test_a_structural_change_reloads(tmp_path: Path) -> None:
    proxy = FakeProxy()
    m = manager(tmp_path, proxy)
    await m.apply(snap(1, E1))
    moved = replace(snap(2, E1), listeners=(replace(LST[0], owner="shop/caller"),))
    assert await m.apply(moved) == "reloaded"
    assert proxy.reloads == 1 and len(proxy.configs) == 2
    assert proxy.commands == [STATS_COMMAND]  # the old worker's counters, before the reload


async def test_a_refused_runtime_command_falls_back_to_a_reload(tmp_path: Path) -> None:
    proxy = FakeProxy()
    m = manager(tmp_path, proxy)
    await m.apply(snap(1, E1))
    proxy.refuse["add server"] = "Already exists a server with the same name in backend."
    assert await m.apply(snap(2, E1, E2)) == "reloaded"
    assert "e_a2-http" in proxy.configs[-1]
    assert m.current is not None and m.current.version == 2
    proxy.refuse.clear()
    proxy.answering = False  # the socket does not answer: a reload too
    assert await m.apply(snap(3, E1)) == "reloaded"
    assert proxy.reloads == 2


async def test_listeners_not_up_after_a_reload_reload_again(tmp_path: Path) -> None:
    proxy = FakeProxy()
    m = manager(tmp_path, proxy)
    proxy.down = ["caller.web (127.0.0.1:18080)"]
    assert await m.apply(snap(1, E1)) == "reloaded"  # started, then reloaded three times
    assert proxy.starts == 1 and proxy.reloads == 3


async def test_a_dead_proxy_is_started_again(tmp_path: Path) -> None:
    proxy = FakeProxy()
    m = manager(tmp_path, proxy)
    assert not await m.restart_if_dead()  # nothing applied yet: nothing to start
    await m.apply(snap(1, E1))
    assert not await m.restart_if_dead()  # alive
    proxy.die()
    assert m.stats() == {} and await m.in_flight("a1") == InFlight()
    assert await m.restart_if_dead()
    assert proxy.starts == 2 and proxy.configs[-1] == proxy.configs[0]
    proxy.die()
    assert await m.apply(snap(2, E1, E2)) == "started"  # apply starts it too


async def test_deletions_are_retried_until_haproxy_lets_the_server_go(tmp_path: Path) -> None:
    proxy = FakeProxy()
    m = manager(tmp_path, proxy)
    await m.apply(snap(1, E1, E2))
    await m.apply(snap(2, E2))
    proxy.refuse["del server"] = "Server still has connections attached to it, cannot remove it."
    await m.delete_drained()
    assert m.pending_deletes == ["del server c_shop.web.http/e_a1-http"]
    proxy.answering = False
    await m.delete_drained()
    assert m.pending_deletes == ["del server c_shop.web.http/e_a1-http"]
    proxy.answering = True
    proxy.refuse["del server"] = "No such server."  # gone already (a reload): done
    await m.delete_drained()
    assert m.pending_deletes == []
    proxy.refuse.clear()
    await m.apply(snap(3, E1, E2))
    await m.apply(snap(4, E1))
    await m.delete_drained()
    assert m.pending_deletes == [] and proxy.commands[-1].startswith("del server")


STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,mode\n"
    "c_shop.web.http,e_a1-http,0,0,2,3,,10,UP,http\n"
    "c_shop.web.http,e_a12-http,0,0,5,5,,10,UP,http\n"
    "c_shop.web.http,BACKEND,0,0,7,8,,20,UP,http\n"
    "c_shop.api.grpc,e_a1-grpc,0,0,1,1,,4,UP,http\n"
    "c_shop.api.grpc,BACKEND,0,0,1,1,,4,UP,http\n"
)


async def test_in_flight_sums_the_allocations_endpoints(tmp_path: Path) -> None:
    proxy = FakeProxy()
    m = manager(tmp_path, proxy)
    await m.apply(snap(1, E1))
    proxy.answers["show stat -1 6 -1"] = STAT
    assert await m.in_flight("a1") == InFlight(requests=3)  # a1-http and a1-grpc, not a12-http
    assert await m.in_flight("a12") == InFlight(requests=5)
    assert await m.in_flight("a3") == InFlight()
    proxy.answers[STATS_COMMAND] = "Name: HAProxy\nPid: 10\n\n" + STAT
    assert set(await m.read_stats()) == {"shop.web.http", "shop.api.grpc"}
    assert set(m.stats()) == {"shop.web.http", "shop.api.grpc"}
    proxy.answering = False
    m.clock.advance(IN_FLIGHT_FRESH)  # type: ignore[attr-defined]  # the reading above is old
    # a running proxy that does not answer: unknown (the drain keeps asking), not 0
    assert await m.in_flight("a1") is None


async def test_versions_are_acknowledged_only_when_the_server_wants_it(tmp_path: Path) -> None:
    proxy, server = FakeProxy(), FakeServer()
    m = manager(tmp_path, proxy, server)
    task = asyncio.create_task(m.run())
    server.queue.put_nowait(snap(1, E1))
    server.queue.put_nowait(snap(2, E1, E2, ack=True))
    async with asyncio.timeout(5):
        while not server.acks:
            await yield_now()
    server.queue.put_nowait(snap(3, E2))
    async with asyncio.timeout(5):
        while m.current is None or m.current.version != 3:
            await yield_now()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert server.acks == [2]
    assert proxy.starts == 1 and proxy.reloads == 0


async def test_without_a_proxy_the_manager_stays_idle(tmp_path: Path) -> None:
    m = MeshManager(lambda: FakeServer(), "n1", tmp_path, None)
    await asyncio.wait_for(m.run(), 1)  # returns at once
    await asyncio.wait_for(m.supervise(), 1)
    assert m.stats() == {} and await m.in_flight("a1") == InFlight()
