"""A drain across a reload, against a real HAProxy: a request in flight on an endpoint that is
being drained stays in the manager's ``in_flight`` count after the proxy reloads (the old
worker still carries it; the node's master CLI reaches it) until it completes. A master
without a CLI (one an earlier Elastin started) is still asked through the runtime socket.
An idle pooled client connection to a TCP port is counted as a connection (which the drain
waits for briefly), not as a request (waited for up to ``stop_grace``)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshproxy import free_port, get, http_backend, needs_haproxy, wait_listening

from elastin.agent.mesh import MeshManager, local_haproxy
from elastin.mesh.haproxy import process
from elastin.mesh.haproxy.process import HaproxyError, HaproxyProcess
from elastin.mesh.haproxy.stats import InFlight, split_info
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot

pytestmark = needs_haproxy


def no_client() -> Any:
    raise AssertionError("the manager's apply and in-flight steps need no server")


async def in_flight(manager: MeshManager, allocation: str) -> InFlight:
    """``manager.in_flight``, asked again while the proxy does not say (None: its master
    re-executes itself after a start and a reload, its CLI closed meanwhile)."""
    deadline = time.monotonic() + 10
    while (n := await manager.in_flight(allocation)) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert n is not None, f"the proxy did not say what is in flight to {allocation}"
    return n


async def counted(manager: MeshManager, allocation: str) -> int:
    """The requests in flight to ``allocation`` (``in_flight``)."""
    return (await in_flight(manager, allocation)).requests


@contextlib.contextmanager
def tcp_backend() -> Iterator[int]:
    """A TCP server on a free loopback port that keeps each connection open, saying
    nothing, until its client closes it (a database or Redis server with a client's pooled
    connection)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass
        conn.close()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn = server.accept()[0]
                held.append(conn)
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.close()


async def workers(proxy: HaproxyProcess) -> list[int]:
    """The live workers the master CLI lists (asked again while it re-executes itself)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await proxy.master.workers()
        except (HaproxyError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def serving_worker(proxy: HaproxyProcess) -> int:
    """The pid of the worker that answers the runtime socket."""
    worker, _ = split_info(await proxy.command("show info") + "\n\n")
    assert worker is not None
    return worker.pid


async def test_a_request_on_the_old_worker_is_counted_until_it_completes(tmp_path: Path) -> None:
    release = threading.Event()

    def slow(_: http.server.BaseHTTPRequestHandler) -> tuple[int, bytes]:
        release.wait(20)
        return 200, b"slow"

    proxy = local_haproxy(tmp_path / "mesh")
    assert proxy is not None
    manager = MeshManager(no_client, "n1", tmp_path / "mesh", proxy)
    with http_backend("slow", slow) as p1, http_backend("fast") as p2:
        web, other = free_port(), free_port()
        lst = (Listener("caller.web", web, "shop.web.http"),)
        e1, e2 = Endpoint("a1-http", "127.0.0.1", p1), Endpoint("a2-http", "127.0.0.1", p2)
        try:
            await manager.apply(
                MeshSnapshot(1, "n1", lst, (Cluster("shop.web.http", endpoints=(e1,)),))
            )
            await asyncio.to_thread(wait_listening, web)
            # the master CLI: only the agent's user may connect
            assert stat.S_IMODE(proxy.master_socket.stat().st_mode) == 0o600
            answers: list[tuple[int, str]] = []
            caller = threading.Thread(
                target=lambda: answers.append(get(f"http://127.0.0.1:{web}/", timeout=30))
            )
            caller.start()
            deadline = time.monotonic() + 10
            while await counted(manager, "a1") == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert await counted(manager, "a1") == 1
            old = await serving_worker(proxy)
            # the endpoint is drained and, at the same time, a structural change (another
            # service's listener) reloads the proxy: the new worker never had a1
            done = await manager.apply(
                MeshSnapshot(
                    2,
                    "n1",
                    (*lst, Listener("caller.other", other, "shop.other.http")),
                    (
                        Cluster("shop.web.http", endpoints=(e2,)),
                        Cluster("shop.other.http", endpoints=(e2,)),
                    ),
                )
            )
            assert done == "reloaded"
            await asyncio.to_thread(wait_listening, other)
            deadline = time.monotonic() + 10
            while await serving_worker(proxy) == old and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await serving_worker(proxy) != old  # the new worker serves the socket
            assert await workers(proxy) == [await serving_worker(proxy), old]
            assert "e_a1-http" not in await proxy.command("show servers state c_shop.web.http")
            assert await counted(manager, "a1") == 1  # on the old worker
            assert await counted(manager, "a2") == 0
            release.set()
            await asyncio.to_thread(caller.join, 30)
            assert answers == [(200, "slow")]
            deadline = time.monotonic() + 10
            while await counted(manager, "a1") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await counted(manager, "a1") == 0
        finally:
            release.set()
            proxy.stop()


async def test_a_master_without_cli_is_asked_through_the_runtime_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    def slow(_: http.server.BaseHTTPRequestHandler) -> tuple[int, bytes]:
        release.wait(20)
        return 200, b"slow"

    monkeypatch.setattr(process, "master_cli_argument", lambda _: "the path has a comma")
    proxy = local_haproxy(tmp_path / "mesh")
    assert proxy is not None
    manager = MeshManager(no_client, "n1", tmp_path / "mesh", proxy)
    with http_backend("slow", slow) as p1:
        web = free_port()
        lst = (Listener("caller.web", web, "shop.web.http"),)
        e1 = Endpoint("a1-http", "127.0.0.1", p1)
        try:
            await manager.apply(
                MeshSnapshot(1, "n1", lst, (Cluster("shop.web.http", endpoints=(e1,)),))
            )
            await asyncio.to_thread(wait_listening, web)
            assert "without a master CLI (the path has a comma)" in caplog.text
            assert not proxy.master_socket.exists()
            caller = threading.Thread(target=lambda: get(f"http://127.0.0.1:{web}/", timeout=30))
            caller.start()
            deadline = time.monotonic() + 10
            while await counted(manager, "a1") == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert await counted(manager, "a1") == 1  # the current worker's count
            release.set()
            await asyncio.to_thread(caller.join, 30)
        finally:
            release.set()
            proxy.stop()


async def test_an_idle_pooled_tcp_connection_is_a_connection_not_a_request(
    tmp_path: Path,
) -> None:
    release = threading.Event()

    def slow(_: http.server.BaseHTTPRequestHandler) -> tuple[int, bytes]:
        release.wait(20)
        return 200, b"slow"

    proxy = local_haproxy(tmp_path / "mesh")
    assert proxy is not None
    manager = MeshManager(no_client, "n1", tmp_path / "mesh", proxy)
    with tcp_backend() as db, http_backend("slow", slow) as api:
        pg, web = free_port(), free_port()
        snap = MeshSnapshot(
            1,
            "n1",
            (
                Listener("caller.db", pg, "shop.db.pg", protocol="tcp"),
                Listener("caller.web", web, "shop.web.http"),
            ),
            (
                Cluster(
                    "shop.db.pg", protocol="tcp", endpoints=(Endpoint("a1-pg", "127.0.0.1", db),)
                ),
                Cluster("shop.web.http", endpoints=(Endpoint("a1-http", "127.0.0.1", api),)),
            ),
        )
        pooled = None
        caller = None
        try:
            await manager.apply(snap)
            await asyncio.to_thread(wait_listening, pg)
            await asyncio.to_thread(wait_listening, web)
            # a client's pool opens a connection and leaves it idle: HAProxy keeps it open
            # (and counts it on the server) until ``timeout server``
            pooled = socket.create_connection(("127.0.0.1", pg), 5)
            deadline = time.monotonic() + 10
            while (await in_flight(manager, "a1")).connections == 0:
                assert time.monotonic() < deadline, "the idle connection was never counted"
                await asyncio.sleep(0.05)
            assert await in_flight(manager, "a1") == InFlight(requests=0, connections=1)
            caller = threading.Thread(target=lambda: get(f"http://127.0.0.1:{web}/", timeout=30))
            caller.start()
            deadline = time.monotonic() + 10
            while (await in_flight(manager, "a1")).requests == 0:
                assert time.monotonic() < deadline, "the request was never counted"
                await asyncio.sleep(0.05)
            assert await in_flight(manager, "a1") == InFlight(requests=1, connections=1)
        finally:
            release.set()
            if caller is not None:
                await asyncio.to_thread(caller.join, 30)
            if pooled is not None:
                pooled.close()
            proxy.stop()
