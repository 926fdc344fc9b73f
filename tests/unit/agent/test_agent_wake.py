"""The agent's side of scale to zero (issue #13, item 3): the mesh manager serves a wake
listener on 127.0.0.1 while it runs, puts its URL into the proxy's configuration for a
service that scales to zero, and passes a wake on to the server once per service per
second; the listener refuses a wrong key, a malformed query and a service that does not
scale to zero on this node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from elastin.agent.mesh import WAKE_EVERY, MeshManager
from elastin.agent.wake import WakeListener
from elastin.mesh.model import Cluster, Listener, MeshSnapshot
from elastin.testing import FakeClock, FakeProxy

ZERO = Cluster("shop.api.http", scale_to_zero=True)
WARM = Cluster("shop.web.http")
SNAP = MeshSnapshot(
    1,
    "n1",
    (Listener("a1.api", 18080, "shop.api.http"), Listener("a1.web", 18081, "shop.web.http")),
    (ZERO, WARM),
)


class FakeServer:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[MeshSnapshot] = asyncio.Queue()
        self.wakes: list[dict[str, int]] = []

    async def mesh_stream(self, node_id: str, quiet: float = 60.0) -> AsyncIterator[MeshSnapshot]:
        while True:
            yield await self.queue.get()

    async def mesh_ack(self, node_id: str, version: int) -> None:
        pass

    async def mesh_wake(self, node_id: str, held: dict[str, int]) -> object:
        self.wakes.append(held)
        return {}


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_the_manager_serves_the_wake_and_tells_the_server(tmp_path: Path) -> None:
    server, proxy, clock = FakeServer(), FakeProxy(), FakeClock()
    m = MeshManager(lambda: server, "n1", tmp_path / "mesh", proxy, clock=clock)
    run = asyncio.create_task(m.run())
    try:
        server.queue.put_nowait(SNAP)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if proxy.configs:
                break
        assert m.wake_listener is not None
        url = m.wake_listener.url
        assert url.startswith("http://127.0.0.1:") and m.wake_listener.key in url
        config = proxy.configs[-1]
        assert f"lua.elastin_wake c_shop.api.http 30000 100 {url} " in config
        assert "c_shop.web.http 30000" not in config  # a warm-only service is never held
        async with httpx.AsyncClient() as http:
            r = await http.post(url, params={"backend": "c_shop.api.http", "held": "2"})
            assert r.status_code == 202
            await settle()
            assert server.wakes == [{"shop.api.http": 2}]
            # within WAKE_EVERY: answered, not sent again
            r = await http.post(url, params={"backend": "c_shop.api.http", "held": "3"})
            assert r.status_code == 202
            await settle()
            assert len(server.wakes) == 1
            clock.advance(WAKE_EVERY)
            await http.post(url, params={"backend": "c_shop.api.http", "held": "1"})
            await settle()
            assert server.wakes[-1] == {"shop.api.http": 1} and len(server.wakes) == 2
            # a service that does not scale to zero, or is not here: 404, nothing sent
            r = await http.post(url, params={"backend": "c_shop.web.http"})
            assert r.status_code == 404 and "does not scale to zero" in r.json()["message"]
            r = await http.post(url, params={"backend": "c_other.x.http"})
            assert r.status_code == 404
            assert len(server.wakes) == 2
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    assert m.wake_listener is None


async def test_the_listener_checks_its_key_and_query() -> None:
    told: list[tuple[str, int]] = []
    listener = WakeListener(lambda c, n: told.append((c, n)) is None)
    await listener.start()
    try:
        base = listener.url.rsplit("/", 1)[0]
        async with httpx.AsyncClient() as http:
            r = await http.post(base + "/" + "0" * 32, params={"backend": "c_a.b.http"})
            assert r.status_code == 404
            for query in (
                {"backend": "a.b.http"},
                {"backend": "c_a b"},
                {"backend": "c_a.b.http", "held": "x"},
                {"backend": "c_a.b.http", "held": "0"},
            ):
                r = await http.post(listener.url, params=query)
                assert r.status_code == 422, query
            r = await http.get(listener.url, params={"backend": "c_a.b.http"})
            assert r.status_code == 405
            assert told == []
            r = await http.post(listener.url, params={"backend": "c_a.b.http", "held": "4"})
            assert r.status_code == 202 and told == [("a.b.http", 4)]
    finally:
        await listener.close()
