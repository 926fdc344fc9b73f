"""The agent's mesh manager against a real HAProxy (issue #11, items 5 and 7):

* a listener whose port a foreign socket holds (this test's) is left out alone: the node's
  other listeners come up and serve, a ``mesh.listener_failed`` report names the port and
  who holds it (this process), and the listener is added once the port is free — the whole
  configuration used to fail (HAProxy could not bind; none of the node's listeners came up);
* traffic totals survive a reload: requests, a reload (HAProxy counts from zero in its new
  worker), more requests: the total is the sum (REQUESTS went from 497 to 37 after a scale)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elastin.agent.mesh import MeshManager, foreign_holder, local_haproxy
from elastin.agent.ports import PortAllocator
from elastin.mesh.haproxy.process import haproxy_binary
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot

pytestmark = pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed")


@contextlib.contextmanager
def backend() -> Iterator[int]:
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def get(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        return int(r.status)


def no_client() -> Any:
    raise AssertionError("the manager's apply path needs no server")


def snapshot(version: int, listeners: tuple[Listener, ...], port: int) -> MeshSnapshot:
    cluster = Cluster("shop.web.http", endpoints=(Endpoint("b1-http", "127.0.0.1", port),))
    return MeshSnapshot(version, "n1", listeners, (cluster,))


async def test_a_listener_on_a_held_port_is_left_out_and_the_others_serve(
    tmp_path: Path,
) -> None:
    pool = PortAllocator()
    proxy = local_haproxy(tmp_path / "mesh")
    assert proxy is not None
    failed: list[tuple[str, int, str]] = []
    manager = MeshManager(
        no_client,
        "n1",
        tmp_path / "mesh",
        proxy,
        ports=pool,
        port_holder=foreign_holder(proxy),
        on_listener_failed=lambda lst, who: failed.append((lst.name, lst.port, who)),
    )
    squatter = socket.socket()  # someone else's server, on a port the agent handed out
    port_a, port_b = pool.take("a1", "a1: upstream web"), pool.take("a2", "a2: upstream web")
    squatter.bind(("127.0.0.1", port_b))
    squatter.listen()
    listeners = (
        Listener("a1.web", port_a, "shop.web.http"),
        Listener("a2.web", port_b, "shop.web.http"),
    )
    try:
        with backend() as b:
            assert await manager.apply(snapshot(1, listeners, b)) == "started"
            assert await asyncio.to_thread(get, port_a) == 200  # the other listener serves
            assert [(n, p) for n, p, _ in failed] == [("a2.web", port_b)]
            assert failed[0][2].startswith(f"pid {os.getpid()} (")
            assert manager.listener_failed == {"a2.web": (port_b, failed[0][2])}
            assert await manager.serves("a1.web", port_a)
            assert not await manager.serves("a2.web", port_b)
            # a new version while the port is still held: a1 is untouched, a2 still out
            assert await manager.apply(snapshot(2, listeners, b)) == "unchanged"
            squatter.close()  # the port is free: the listener comes up
            assert await manager.retry_failed_listeners()
            assert await asyncio.to_thread(get, port_b) == 200
            assert manager.listener_failed == {} and await manager.serves("a2.web", port_b)
    finally:
        squatter.close()
        proxy.stop()


async def test_traffic_totals_survive_a_reload(tmp_path: Path) -> None:
    pool = PortAllocator()
    proxy = local_haproxy(tmp_path / "mesh")
    assert proxy is not None
    manager = MeshManager(no_client, "n1", tmp_path / "mesh", proxy, ports=pool)
    port_a, port_b = pool.take("a1", "x"), pool.take("a2", "y")
    one = (Listener("a1.web", port_a, "shop.web.http"),)
    two = (*one, Listener("a2.web", port_b, "shop.web.http"))
    try:
        with backend() as b:
            await manager.apply(snapshot(1, one, b))
            for _ in range(7):
                assert await asyncio.to_thread(get, port_a) == 200
            # no reading since: the manager reads the old worker's counters as it reloads
            # (a structural change: a hitless reload; HAProxy's new worker counts from zero)
            assert await manager.apply(snapshot(2, two, b)) == "reloaded"
            for _ in range(5):
                assert await asyncio.to_thread(get, port_b) == 200
            total = (await manager.read_stats())["shop.web.http"]
            assert total.requests == 12
            assert total.responses_2xx == 12
            assert sum(e.served for e in total.endpoints) == 12
            assert manager.stats()["shop.web.http"].requests == 12
            # HAProxy restarted (it died): the totals go on from there too
            proxy.stop()
            assert await manager.restart_if_dead()
            assert await asyncio.to_thread(get, port_a) == 200
            assert (await manager.read_stats())["shop.web.http"].requests == 13
    finally:
        proxy.stop()
