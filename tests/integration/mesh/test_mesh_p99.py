"""A measured p99 with a real HAProxy (issue #13): responses of known delays through a service
whose proxy keeps a latency histogram (``Cluster.latency_histogram``) are counted in the
buckets of their time — read by the agent's mesh manager (``show table``), kept across a
reload, reported as ``latency_buckets`` and turned by the server's windows into a p99 in
the bucket of the slow responses. A 504 of the mesh's own (no answer within the request
timeout) is counted at that timeout, an endpoint's own 504 (even with ``x-elastin-error``) once
in the bucket of its time. A request held in the proxy's queue (``max_connections: 1``) is
counted with its wait there, and a 503 after the queue timeout at that timeout. No upper
timing bound is asserted: a delay is at least what the endpoint slept (or the test held it),
never at most."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from pathlib import Path
from typing import Any

from meshproxy import free_port, get, http_backend, needs_haproxy, serve_http, wait_listening

from elastin.agent.mesh import MeshManager, local_haproxy
from elastin.agent.sampling import build_report
from elastin.mesh.haproxy.render import latency_bucket
from elastin.mesh.model import (
    CircuitBreaker,
    Cluster,
    Endpoint,
    Listener,
    MeshSnapshot,
    OutlierDetection,
    RetryPolicy,
    Timeouts,
)
from elastin.mesh.model.traffic import LATENCY_BOUNDS_MS
from elastin.server.windows import Windows, parse_report
from elastin.testing import FakeClock

pytestmark = needs_haproxy

NAME = "shop.web.http"


def no_client() -> Any:
    raise AssertionError("the manager's apply and stats need no server")


def sleepy(h: http.server.BaseHTTPRequestHandler) -> tuple[int, bytes]:
    """Answers after the milliseconds its path names (``/300``)."""
    time.sleep(int(h.path.strip("/") or 0) / 1000)
    return 200, b"ok"


def snapshot(version: int, listen: int, port: int, retries: int = 0) -> MeshSnapshot:
    c = Cluster(
        NAME,
        endpoints=(Endpoint("a1-http", "127.0.0.1", port),),
        latency_histogram=True,
        timeouts=Timeouts(request=0.5),  # a 504 after half a second
        retries=RetryPolicy(attempts=retries),
        outlier=OutlierDetection(enabled=False),
    )
    return MeshSnapshot(version, "n1", (Listener("caller.web", listen, NAME),), (c,))


async def calls(listen: int, paths: list[str]) -> list[int]:
    def one(path: str) -> int:
        return get(f"http://127.0.0.1:{listen}{path}", timeout=10)[0]

    return list(await asyncio.gather(*(asyncio.to_thread(one, p) for p in paths)))


def cumulative_at(buckets: list[list[Any]], le: int) -> int:
    return int(next(n for b, n in buckets if b == le))


async def test_known_delays_land_in_their_buckets_and_give_the_p99(tmp_path: Path) -> None:
    proxy = local_haproxy(tmp_path / "mesh")
    assert proxy is not None
    manager = MeshManager(no_client, "n1", tmp_path / "mesh", proxy)
    clock = FakeClock(1000.0)
    windows = Windows(clock)

    def reading(at: float) -> dict[str, Any]:
        mesh = manager.stats()
        body = build_report(at, 1.0, {}, mesh, mono=at, series="s1")
        windows.record("n1", parse_report(body))
        port: dict[str, Any] = body["ports"][NAME]
        return port

    with http_backend("web", sleepy) as port:
        listen = free_port()
        try:
            assert await manager.apply(snapshot(1, listen, port)) == "started"
            await asyncio.to_thread(wait_listening, listen)
            await manager.read_stats()
            first = reading(1000.0)
            assert [n for _, n in first["latency_buckets"]] == [0] * (len(LATENCY_BOUNDS_MS) + 1)

            # 97 fast answers and 3 that take at least 300 ms; then one past the timeout
            statuses = await calls(listen, ["/0"] * 97 + ["/300"] * 3)
            assert statuses == [200] * 100
            assert await calls(listen, ["/2000"]) == [504]
            await manager.read_stats()
            clock.advance(1)
            second = reading(1001.0)
            buckets = second["latency_buckets"]
            assert buckets[-1] == [None, 101]  # every response, the 504 too
            assert cumulative_at(buckets, 250) <= 97  # the slow ones are above 250 ms
            assert cumulative_at(buckets, 30000) == 101
            # the 504 at the request timeout (500 ms): not in the buckets below it
            assert latency_bucket(500) == LATENCY_BOUNDS_MS.index(600)
            assert cumulative_at(buckets, 400) <= 100 and cumulative_at(buckets, 600) >= 1
            p99 = windows.service("shop", "web", 1)["total"]["p99_response_ms"]["current"]
            assert p99 is not None and p99 > 250  # rank 99 of 101: one of the slow ones

            # a reload: a new worker, its table at zero. The old worker may still take the
            # first requests (both listen for a moment); whichever counts them, the histogram
            # goes on from what the old one had counted, and holds every request counted
            assert await manager.apply(snapshot(2, listen, port, retries=1)) == "reloaded"
            await asyncio.to_thread(wait_listening, listen)
            deadline = time.monotonic() + 20
            while manager.stats()[NAME].requests <= 101 and time.monotonic() < deadline:
                assert await calls(listen, ["/0"] * 5) == [200] * 5
                await manager.read_stats()
            assert manager.totals.worker is not None
            clock.advance(1)
            third = reading(1002.0)
            assert third["requests"] > 101
            assert third["latency_buckets"][-1] == [None, third["requests"]]
            after = [n for _, n in third["latency_buckets"]]
            assert all(a >= b for a, b in zip(after, [n for _, n in buckets], strict=True))
            assert proxy.reloads == 1
        finally:
            proxy.stop()


# --- what is counted once, and the wait in the queue ------------------------------------------


def counted(manager: MeshManager) -> tuple[int, tuple[int, ...]]:
    """The requests the proxy took and its responses per bucket (exclusive), as last read."""
    s = manager.stats()[NAME]
    return s.requests, s.latency


class Gate:
    """An endpoint whose ``/hold`` answers only once the test lets it (``release``): it
    holds the service's one connection (``max_connections: 1``) as long as the test wants,
    so that the next request waits in the proxy's queue; ``/`` answers at once."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()

    def __call__(self, h: http.server.BaseHTTPRequestHandler) -> tuple[int, bytes]:
        if h.path == "/hold":
            self.started.set()
            self.released.wait(30)
        return 200, b"ok"


def queued_snapshot(listen: int, port: int, queue_timeout: float) -> MeshSnapshot:
    c = Cluster(
        NAME,
        endpoints=(Endpoint("a1-http", "127.0.0.1", port),),
        latency_histogram=True,
        timeouts=Timeouts(request=10.0),
        breaker=CircuitBreaker(max_connections=1, queue_timeout=queue_timeout),
        retries=RetryPolicy(attempts=0),
        outlier=OutlierDetection(enabled=False),
    )
    return MeshSnapshot(1, "n1", (Listener("caller.web", listen, NAME),), (c,))


async def wait_queued(manager: MeshManager) -> None:
    deadline = time.monotonic() + 10
    while (s := (await manager.read_stats()).get(NAME)) is None or s.queued < 1:
        assert time.monotonic() < deadline, "no request waits in the proxy's queue"
        await asyncio.sleep(0.02)


class Relaying(http.server.BaseHTTPRequestHandler):
    """A gateway service that relays a mesh's 504: its own answer carries x-elastin-error."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(504)
        self.send_header("x-elastin-error", "no answer from an endpoint of shop.db.http")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


async def test_an_endpoints_own_504_with_the_mesh_header_is_counted_once(
    tmp_path: Path,
) -> None:
    proxy = local_haproxy(tmp_path / "mesh")
    assert proxy is not None
    manager = MeshManager(no_client, "n1", tmp_path / "mesh", proxy)
    with serve_http(Relaying) as port:
        listen = free_port()
        try:
            assert await manager.apply(snapshot(1, listen, port)) == "started"
            await asyncio.to_thread(wait_listening, listen)
            assert await calls(listen, ["/"] * 10) == [504] * 10
            await manager.read_stats()
            requests, buckets = counted(manager)
            assert requests == 10
            assert sum(buckets) == 10  # once each, in the bucket of its time
            # answered at once: none of them at the mesh's request timeout (500 ms)
            assert buckets[latency_bucket(500)] == 0
        finally:
            proxy.stop()


async def test_a_request_held_in_the_queue_is_counted_with_its_wait(tmp_path: Path) -> None:
    proxy = local_haproxy(tmp_path / "mesh")
    assert proxy is not None
    manager = MeshManager(no_client, "n1", tmp_path / "mesh", proxy)
    gate = Gate()
    with http_backend("web", gate) as port:
        listen = free_port()
        try:
            assert await manager.apply(queued_snapshot(listen, port, 10.0)) == "started"
            await asyncio.to_thread(wait_listening, listen)
            held = asyncio.ensure_future(calls(listen, ["/hold"]))
            assert await asyncio.to_thread(gate.started.wait, 10)
            waiting = asyncio.ensure_future(calls(listen, ["/"]))  # behind the held one
            await wait_queued(manager)
            # it has waited at least this long once the held request ends (the endpoint
            # then answers it at once: its own time, %Tr, is about 0 ms)
            await asyncio.sleep(0.7)
            gate.released.set()
            assert await held == [200] and await waiting == [200]
            await manager.read_stats()
            requests, buckets = counted(manager)
            assert requests == 2 and sum(buckets) == 2
            # both waited at least 700 ms: in no bucket up to 600 ms
            assert sum(buckets[: latency_bucket(600) + 1]) == 0
        finally:
            gate.released.set()
            proxy.stop()


async def test_a_503_after_the_queue_timeout_is_counted_at_it(tmp_path: Path) -> None:
    proxy = local_haproxy(tmp_path / "mesh")
    assert proxy is not None
    manager = MeshManager(no_client, "n1", tmp_path / "mesh", proxy)
    gate = Gate()
    with http_backend("web", gate) as port:
        listen = free_port()
        try:
            assert await manager.apply(queued_snapshot(listen, port, 0.3)) == "started"
            await asyncio.to_thread(wait_listening, listen)
            held = asyncio.ensure_future(calls(listen, ["/hold"]))
            assert await asyncio.to_thread(gate.started.wait, 10)
            # the second waits for the connection the first holds, for 300 ms: the mesh's 503
            assert await calls(listen, ["/"]) == [503]
            await asyncio.sleep(0.5)  # the held one then waited longer than 400 ms
            gate.released.set()
            assert await held == [200]
            await manager.read_stats()
            requests, buckets = counted(manager)
            assert requests == 2 and sum(buckets) == 2
            assert buckets[latency_bucket(300)] == 1  # the 503, at the queue timeout
            assert latency_bucket(300) == LATENCY_BOUNDS_MS.index(400)
            assert sum(buckets[: latency_bucket(300) + 1]) == 1  # the held one is above it
        finally:
            gate.released.set()
            proxy.stop()
