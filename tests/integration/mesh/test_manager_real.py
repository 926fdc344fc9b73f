"""The agent's mesh manager against a real HAProxy: a removed endpoint that still carries a
request is deleted only once that request is done (HAProxy refuses the deletion until
then, and the manager keeps asking), and an endpoint that is gone already is not asked
about for ever."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from pathlib import Path
from typing import Any

from meshproxy import free_port, get, http_backend, needs_haproxy, wait_listening

from elastin.agent.mesh import MeshManager, local_haproxy
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot

pytestmark = needs_haproxy


def no_client() -> Any:
    raise AssertionError("the manager's apply and drain steps need no server")


async def counted(manager: MeshManager, allocation: str) -> int:
    """``manager.in_flight``, asked again while the proxy does not say (None: its master
    re-executes itself after a start and a reload, its CLI closed meanwhile)."""
    deadline = time.monotonic() + 10
    while (n := await manager.in_flight(allocation)) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert n is not None, f"the proxy did not say what is in flight to {allocation}"
    return n.requests


async def test_a_removed_endpoint_is_deleted_once_its_request_is_done(tmp_path: Path) -> None:
    release = threading.Event()

    def slow(_: http.server.BaseHTTPRequestHandler) -> tuple[int, bytes]:
        release.wait(10)
        return 200, b"slow"

    proxy = local_haproxy(tmp_path / "mesh")
    assert proxy is not None
    manager = MeshManager(no_client, "n1", tmp_path / "mesh", proxy)
    with http_backend("slow", slow) as p1, http_backend("fast") as p2:
        listen = free_port()
        lst = (Listener("caller.web", listen, "shop.web.http"),)
        e1, e2 = Endpoint("a1-http", "127.0.0.1", p1), Endpoint("a2-http", "127.0.0.1", p2)
        try:
            await manager.apply(
                MeshSnapshot(1, "n1", lst, (Cluster("shop.web.http", endpoints=(e1,)),))
            )
            await asyncio.to_thread(wait_listening, listen)
            answers: list[tuple[int, str]] = []
            caller = threading.Thread(
                target=lambda: answers.append(get(f"http://127.0.0.1:{listen}/"))
            )
            caller.start()
            deadline = time.monotonic() + 5
            while await counted(manager, "a1") == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert await counted(manager, "a1") == 1
            assert await counted(manager, "a") == 0  # another allocation's prefix
            done = await manager.apply(
                MeshSnapshot(2, "n1", lst, (Cluster("shop.web.http", endpoints=(e2,)),))
            )
            assert done == "updated"
            assert manager.pending_deletes == ["del server c_shop.web.http/e_a1-http"]
            await manager.delete_drained()  # "Server still has connections": asked again later
            assert manager.pending_deletes == ["del server c_shop.web.http/e_a1-http"]
            release.set()
            await asyncio.to_thread(caller.join, 10)
            assert answers == [(200, "slow")]
            # then the connection it used idles in the pool until HAProxy purges it
            # (pool-purge-delay, 5 s): asked again until then
            t0 = time.monotonic()
            while manager.pending_deletes and time.monotonic() < t0 + 30:
                await asyncio.sleep(0.2)
                await manager.delete_drained()
            print(f"deleted after {time.monotonic() - t0:.1f}s")
            assert manager.pending_deletes == []
            state = await proxy.command("show servers state c_shop.web.http")
            assert "e_a1-http" not in state and "e_a2-http" in state
            assert (await asyncio.to_thread(get, f"http://127.0.0.1:{listen}/"))[1] == "fast"
            # a deletion of a server that is gone already (e.g. by a reload) is dropped
            manager.pending_deletes = ["del server c_shop.web.http/e_a9-http"]
            await manager.delete_drained()
            assert manager.pending_deletes == []
            assert proxy.reloads == 0
            assert "shop.web.http" in await manager.read_stats()
        finally:
            release.set()
            proxy.stop()
