"""A measured p99 with a real HAProxy (issue #13): responses of known delays through a service
whose proxy keeps a latency histogram (``Cluster.latency_histogram``) are counted in the
buckets of their time — read by the agent's mesh manager (``show table``), kept across a
reload, reported as ``latency_buckets`` and turned by the server's windows into a p99 in
the bucket of the slow responses. A 504 of the mesh's own (no answer within the request
timeout) is counted at that timeout. No upper timing bound is asserted: a delay is at least
what the endpoint slept, never at most."""

from __future__ import annotations

import asyncio
import http.server
import time
from pathlib import Path
from typing import Any

from meshproxy import free_port, get, http_backend, needs_haproxy, wait_listening

from elastin.agent.mesh import MeshManager, local_haproxy
from elastin.agent.sampling import build_report
from elastin.mesh.haproxy.render import latency_bucket
from elastin.mesh.model import (
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
