"""Real faults through a real HAProxy configured by Elastin, under load.

* an endpoint killed mid-load: zero failed (idempotent) requests — connection failures are
  retried on another endpoint;
* one slow endpoint: least-request balancing moves the traffic away from it;
* an endpoint answering 500s: outlier detection marks it down, health checks bring it back;
* 100 endpoint changes per second under load: zero failed requests and zero reloads.

(An unreachable upstream answering a 503 that names it is in ``test_haproxy_real.py``.)
Every load is bounded in requests and seconds, on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace

import pytest
from meshproxy import MeshProxy, free_port, http_backend, needs_haproxy

from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot, OutlierDetection

pytestmark = [pytest.mark.integration, needs_haproxy]
Start = Callable[[MeshSnapshot], MeshProxy]


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError as e:
        return 0, str(e)


class Load:
    """``threads`` clients sending GETs until ``stop()``, at most ``limit`` requests or
    ``seconds`` in all; ``results`` holds ``(status, body)`` of every request."""

    def __init__(self, url: str, threads: int, limit: int, seconds: float) -> None:
        self.url, self.limit = url, limit
        self.deadline = time.monotonic() + seconds
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            if len(self.results) >= self.limit:
                return
            self.results.append(fetch(self.url))

    def stop(self) -> list[tuple[int, str]]:
        self._stop.set()
        return self.finish()

    def finish(self) -> list[tuple[int, str]]:
        """Wait until the clients end by themselves (their limit or their time)."""
        for t in self._threads:
            t.join(30)
        return self.results

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` requests have been answered (a condition, not a time)."""
        deadline = time.monotonic() + timeout
        while len(self.results) < count:
            assert time.monotonic() < deadline, f"{len(self.results)} of {count} requests"
            assert any(t.is_alive() for t in self._threads), "the load ended early"
            time.sleep(0.01)


def one_cluster(listen: int, endpoints: tuple[Endpoint, ...], **policy: object) -> MeshSnapshot:
    cluster = Cluster("shop.api.http", endpoints=endpoints, **policy)  # type: ignore[arg-type]
    return MeshSnapshot(1, "n1", (Listener("web.api", listen, "shop.api.http"),), (cluster,))


def failures(results: list[tuple[int, str]]) -> dict[int, int]:
    bad = [s for s, _ in results if s != 200]
    return {s: bad.count(s) for s in set(bad)}


def test_an_endpoint_killed_under_load_fails_no_request(mesh_proxy: Start) -> None:
    with contextlib.ExitStack() as stack:
        ports = [stack.enter_context(http_backend(n)) for n in ("a", "b")]
        victim = contextlib.ExitStack()
        ports.append(victim.enter_context(http_backend("c")))
        listen = free_port()
        endpoints = tuple(Endpoint(f"e{i}-http", "127.0.0.1", p) for i, p in enumerate(ports))
        proxy = mesh_proxy(one_cluster(listen, endpoints))
        load = Load(proxy.url(listen), threads=4, limit=1500, seconds=30)
        load.wait_for(150)  # every endpoint served some
        victim.close()  # "c" stops: its port refuses connections from now on
        load.wait_for(len(load.results) + 300)  # and the load goes on without it
        results = load.stop()
    assert len(results) > 100
    assert not failures(results), failures(results)
    served = {body for _, body in results}
    assert served == {"a", "b", "c"}  # "c" served until it died


@pytest.mark.parametrize(("lb", "share"), [("least_request", 0.6), ("least_conn", 0.75)])
def test_traffic_moves_away_from_a_slow_endpoint(mesh_proxy: Start, lb: str, share: float) -> None:
    def slow(_: object) -> tuple[int, bytes]:
        time.sleep(0.3)
        return 200, b"slow"

    with http_backend("fast") as fast, http_backend("slow", slow) as sluggish:
        listen = free_port()
        endpoints = (
            Endpoint("f1-http", "127.0.0.1", fast),
            Endpoint("s1-http", "127.0.0.1", sluggish),
        )
        proxy = mesh_proxy(one_cluster(listen, endpoints, lb=lb))
        results = Load(proxy.url(listen), threads=8, limit=300, seconds=4)
        done = results.finish()  # the clients end at their limit or after 4 s
    assert not failures(done), failures(done)
    bodies = [b for _, b in done]
    # round robin would give each half; least-request (the less busy of two random draws,
    # which may be the same endpoint) and least-connections send most to the fast one
    assert bodies.count("fast") > share * len(bodies), (bodies.count("fast"), len(bodies))


def test_an_endpoint_answering_500s_is_marked_down_then_back(mesh_proxy: Start) -> None:
    broken = threading.Event()
    broken.set()

    def flaky(_: object) -> tuple[int, bytes]:
        return (500, b"oops") if broken.is_set() else (200, b"flaky")

    with http_backend("good") as good, http_backend("flaky", flaky) as bad:
        listen = free_port()
        endpoints = (
            Endpoint("g1-http", "127.0.0.1", good),
            Endpoint("b1-http", "127.0.0.1", bad),
        )
        snap = one_cluster(
            listen, endpoints, outlier=OutlierDetection(consecutive_errors=3, enabled=True)
        )
        proxy = mesh_proxy(snap)
        url = proxy.url(listen)

        def state() -> int:
            """srv_op_state of the flaky endpoint: 0 down, 2 up."""
            for line in proxy.send("show servers state c_shop.api.http").splitlines():
                cols = line.split()
                if len(cols) > 5 and cols[3] == "e_b1-http":
                    return int(cols[5])
            raise AssertionError("the flaky endpoint is not in HAProxy")

        first = [fetch(url) for _ in range(12)]  # round robin: 6 reach the flaky endpoint
        assert any(s == 500 for s, _ in first)
        assert state() == 0  # three 500s in a row: marked down
        after = [fetch(url) for _ in range(20)]
        assert {b for _, b in after} == {"good"} and not failures(after)
        broken.clear()  # fixed: the health checks (every 2 s, 2 passes) bring it back
        deadline = time.monotonic() + 20
        while state() != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state() == 2
        assert "flaky" in {fetch(url)[1] for _ in range(10)}


def test_100_endpoint_changes_per_second_under_load(mesh_proxy: Start) -> None:
    with contextlib.ExitStack() as stack:
        ports = [stack.enter_context(http_backend(n)) for n in ("a", "b", "c", "d")]
        listen = free_port()
        stable = [Endpoint(f"s{i}-http", "127.0.0.1", p) for i, p in enumerate(ports)]
        snap = one_cluster(listen, tuple(stable))
        proxy = mesh_proxy(snap)
        load = Load(proxy.url(listen), threads=4, limit=5000, seconds=8)
        rng = random.Random(7)
        extra: list[Endpoint] = []
        changes = 0
        start = time.monotonic()
        for n in range(200):  # 200 changes, paced at 100 per second
            kind = n % 4
            if kind == 0:  # readiness: keep at least two stable endpoints ready
                i = rng.randrange(4)
                ready = sum(e.ready for e in stable)
                if stable[i].ready and ready <= 2:
                    continue
                stable[i] = replace(stable[i], ready=not stable[i].ready)
            elif kind == 1:  # weight
                i = rng.randrange(4)
                stable[i] = replace(stable[i], weight=rng.randint(1, 200))
            elif kind == 2:  # a new replica (a new allocation: a new id)
                extra.append(Endpoint(f"x{n}-http", "127.0.0.1", rng.choice(ports)))
            elif extra:  # a replica goes away
                extra.pop(0)
            cluster = replace(snap.clusters[0], endpoints=(*stable, *extra))
            snap = replace(snap, version=snap.version + 1, clusters=(cluster,))
            proxy.apply(snap)
            changes += 1
            time.sleep(max(0.0, start + (n + 1) / 100 - time.monotonic()))
        elapsed = time.monotonic() - start
        results = load.stop()
        proxy.delete_drained()
    assert changes >= 150 and elapsed < 4.0, (changes, elapsed)
    assert len(results) > 100
    assert not failures(results), failures(results)
    assert proxy.reloads == 0  # every change went through the runtime API
