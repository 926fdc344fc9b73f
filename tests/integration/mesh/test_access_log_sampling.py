"""The mesh's lean defaults with a real HAProxy and real traffic (issue #12, decision 2).

A service's access log holds every abnormal request — a 5xx, a retried request, a timeout,
a 429, a request slower than ``slow`` — and a sample of the normal ones; ``all`` logs every
request. A trace is continued when the caller sends a valid ``traceparent`` and started for
a sample of the other requests; a request sampled out carries no new trace.

To tell that a request was *not* logged, each test ends with a request that is always logged
(an endpoint's 500 on ``/marker``) and waits for its line: the ring keeps the order in which
requests ended, so the lines of the requests before it have arrived by then.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from meshproxy import MeshProxy, free_port, get, http_backend, needs_haproxy

from elastin.mesh.model import (
    Cluster,
    Endpoint,
    Listener,
    MeshSnapshot,
    OutlierDetection,
    Timeouts,
)

pytestmark = [pytest.mark.integration, needs_haproxy]
Start = Callable[[MeshSnapshot], MeshProxy]
VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
STARTED = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01")


class Backend:
    """An HTTP endpoint whose answer depends on the path: ``/fail`` 500, ``/busy`` 429,
    ``/slow`` 200 after 0.5 s, ``/marker`` 500, anything else 200; it records the
    ``traceparent`` each request carried (path -> header, "" for none)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, h: http.server.BaseHTTPRequestHandler) -> tuple[int, bytes]:
        self.seen.append((h.path, h.headers.get("traceparent", "")))
        if h.path == "/slow":
            time.sleep(0.5)
        status = {"/fail": 500, "/busy": 429, "/marker": 500}.get(h.path, 200)
        return status, b"answer"


@contextmanager
def service(mesh_proxy: Start, **policy: Any) -> Iterator[tuple[MeshProxy, int, Backend]]:
    """A proxy with one listener to one endpoint (the cluster's ``policy`` as given)."""
    backend = Backend()
    with http_backend("web", backend) as port:
        listen = free_port()
        policy.setdefault("outlier", OutlierDetection(enabled=False))
        cluster = Cluster(
            "shop.web.http", endpoints=(Endpoint("w1-http", "127.0.0.1", port),), **policy
        )
        snap = MeshSnapshot(
            1, "n1", (Listener("c.web", listen, "shop.web.http", owner="shop/c"),), (cluster,)
        )
        yield mesh_proxy(snap), listen, backend


def logged_until_marker(proxy: MeshProxy, listen: int) -> list[dict[str, Any]]:
    """Every access log line, once the line of a request sent now (``/marker``) is in."""
    assert get(proxy.url(listen, "/marker"))[0] == 500
    lines = proxy.access_log(1, '"path":"\\/marker"', timeout=15)
    assert lines and lines[-1]["path"] == "/marker", lines
    return lines[:-1]


def test_by_default_a_normal_request_sampled_out_is_not_logged(mesh_proxy: Start) -> None:
    # the defaults but for the sample: errors only, so that no normal request is drawn
    with service(mesh_proxy, access_log_sample=0.0, slow=0) as (proxy, listen, _):
        for i in range(20):
            assert get(proxy.url(listen, f"/n{i}"))[0] == 200
        assert logged_until_marker(proxy, listen) == []


def test_5xx_429_and_slow_answers_are_always_logged(mesh_proxy: Start) -> None:
    with service(mesh_proxy, access_log_sample=0.0, slow=0.1) as (proxy, listen, _):
        for path, status in (("/ok", 200), ("/fail", 500), ("/ok", 200), ("/busy", 429)):
            assert get(proxy.url(listen, path))[0] == status
        assert get(proxy.url(listen, "/slow"))[0] == 200  # 0.5 s: beyond `slow`
        lines = logged_until_marker(proxy, listen)
    assert [(x["path"], x["status"]) for x in lines] == [
        ("/fail", 500),
        ("/busy", 429),
        ("/slow", 200),
    ]
    assert lines[-1]["response_ms"] >= 100


def test_a_retried_request_is_always_logged(mesh_proxy: Start) -> None:
    backend = Backend()
    with http_backend("web", backend) as port:
        dead = free_port()  # nothing listens there: a connection failure, then a retry
        listen = free_port()
        cluster = Cluster(
            "shop.web.http",
            endpoints=(
                Endpoint("d1-http", "127.0.0.1", dead),
                Endpoint("w1-http", "127.0.0.1", port),
            ),
            outlier=OutlierDetection(enabled=False),
            access_log_sample=0.0,
        )
        proxy = mesh_proxy(
            MeshSnapshot(1, "n1", (Listener("c.web", listen, "shop.web.http"),), (cluster,))
        )
        for i in range(6):  # round robin: at least every other one meets the dead one first
            assert get(proxy.url(listen, f"/r{i}"))[0] == 200
        lines = logged_until_marker(proxy, listen)
    assert len(lines) >= 3, lines
    # retried on the live endpoint ("+": after a redispatch, a string for that reason)
    assert all(x["status"] == 200 and x["retries"] in ("1", "+1") for x in lines), lines
    assert all(x["endpoint"] == "e_w1-http" for x in lines), lines


def test_a_timeout_is_always_logged(mesh_proxy: Start) -> None:
    with service(mesh_proxy, access_log_sample=0.0, timeouts=Timeouts(request=0.2)) as (
        proxy,
        listen,
        _,
    ):
        assert get(proxy.url(listen, "/slow"))[0] == 504
        lines = logged_until_marker(proxy, listen)
    assert [(x["path"], x["status"]) for x in lines] == [("/slow", 504)]
    assert lines[0]["termination"].startswith("s")  # the endpoint timed out


def test_all_logs_every_request(mesh_proxy: Start) -> None:
    with service(mesh_proxy, access_log_sample=1.0) as (proxy, listen, _):
        for i in range(20):
            assert get(proxy.url(listen, f"/n{i}"))[0] == 200
        lines = logged_until_marker(proxy, listen)
    assert [x["path"] for x in lines] == [f"/n{i}" for i in range(20)]


def test_the_default_sample_logs_a_share_of_normal_requests(mesh_proxy: Start) -> None:
    # a share of one half over 400 requests: 200 expected, 10 the standard deviation
    with service(mesh_proxy, access_log_sample=0.5, slow=0) as (proxy, listen, _):
        for i in range(400):
            assert get(proxy.url(listen, f"/n{i}"))[0] == 200
        lines = logged_until_marker(proxy, listen)
    assert 120 < len(lines) < 280, len(lines)


def test_an_incoming_traceparent_is_continued_and_logged(mesh_proxy: Start) -> None:
    with service(mesh_proxy, access_log_sample=0.0, trace_sample=0.0) as (proxy, listen, be):
        # a normal request: passed on, not logged; a failing one: passed on and logged
        assert get(proxy.url(listen, "/n"), {"traceparent": VALID})[0] == 200
        assert get(proxy.url(listen, "/fail"), {"traceparent": VALID})[0] == 500
        lines = logged_until_marker(proxy, listen)
    assert be.seen[:2] == [("/n", VALID), ("/fail", VALID)]
    assert [(x["path"], x["traceparent"]) for x in lines] == [("/fail", VALID)]


def test_a_request_sampled_out_carries_no_new_trace(mesh_proxy: Start) -> None:
    with service(mesh_proxy, access_log_sample=1.0, trace_sample=0.0) as (proxy, listen, be):
        assert get(proxy.url(listen, "/none"))[0] == 200
        # an invalid one is not passed on either (nor is a new one made for it)
        assert get(proxy.url(listen, "/bad"), {"traceparent": "00-zz"})[0] == 200
        lines = logged_until_marker(proxy, listen)
    assert be.seen[:2] == [("/none", ""), ("/bad", "")]
    assert [x["traceparent"] for x in lines] == ["-", "-"]  # none


def test_a_sample_of_requests_starts_a_trace(mesh_proxy: Start) -> None:
    with service(mesh_proxy, access_log_sample=1.0, trace_sample=0.5) as (proxy, listen, be):
        for i in range(400):
            assert get(proxy.url(listen, f"/n{i}"))[0] == 200
        lines = logged_until_marker(proxy, listen)
    started = [tp for _, tp in be.seen[:400] if tp]
    assert 120 < len(started) < 280, len(started)  # 200 expected, 10 the deviation
    assert all(STARTED.fullmatch(tp) for tp in started), started[:3]  # sampled flag set
    assert len(set(started)) == len(started)
    # what the endpoint got is what was logged, and a request with none logs none (by path:
    # HAProxy's threads may write the lines of two back-to-back requests in either order)
    assert {x["path"]: x["traceparent"] for x in lines} == {
        path: tp or "-" for path, tp in be.seen[:400]
    }
    assert len(lines) == 400


def test_trace_every_request_when_the_sample_is_one(mesh_proxy: Start) -> None:
    with service(mesh_proxy, trace_sample=1.0) as (proxy, listen, be):
        for path in ("/a", "/b"):
            assert get(proxy.url(listen, path))[0] == 200
        assert get(proxy.url(listen, "/c"), {"traceparent": 'ev"il'})[0] == 200
    assert all(STARTED.fullmatch(tp) for _, tp in be.seen), be.seen


@contextmanager
def echo_server() -> Iterator[int]:
    """A TCP endpoint on a free loopback port that sends back what it gets."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        # a connection the test or the proxy resets (an abnormal one, on purpose) just ends
        with conn, contextlib.suppress(ConnectionError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:  # ends when the listening socket is closed
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()
        t.join(5)


def test_tcp_logs_abnormal_connections_only_unless_all(mesh_proxy: Start) -> None:
    def cluster(name: str, port: int, sample: float) -> Cluster:
        return Cluster(
            name,
            protocol="tcp",
            endpoints=(Endpoint(f"{name.split('.')[1]}-pg", "127.0.0.1", port),),
            outlier=OutlierDetection(enabled=False),
            access_log_sample=sample,
        )

    listen, listen_all, listen_dead = free_port(), free_port(), free_port()
    with echo_server() as up:
        snap = MeshSnapshot(
            1,
            "n1",
            (
                Listener("a.db", listen, "shop.db.pg", protocol="tcp"),
                Listener("a.dball", listen_all, "shop.dball.pg", protocol="tcp"),
                Listener("a.gone", listen_dead, "shop.gone.pg", protocol="tcp"),
            ),
            (
                cluster("shop.db.pg", up, 0.01),  # the default: abnormal connections only
                cluster("shop.dball.pg", up, 1.0),
                cluster("shop.gone.pg", free_port(), 0.01),  # nothing listens there
            ),
        )
        proxy = mesh_proxy(snap)
        base = proxy.log.read_text().count('"service":')  # the start's own probes
        for port in (listen, listen_all):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"ping")
                assert c.recv(4) == b"ping"
                c.shutdown(socket.SHUT_WR)
                assert c.recv(10) == b""
        with socket.create_connection(("127.0.0.1", listen_dead), timeout=5) as c:
            c.sendall(b"ping")
            assert c.recv(10) == b""  # no endpoint took it: HAProxy closes
        lines = proxy.access_log(1, '"c_shop.gone.pg"', timeout=15)[base:]
    assert [x["service"] for x in lines] == ["c_shop.dball.pg", "c_shop.gone.pg"], lines
    assert lines[1]["termination"][:1] == "S" and lines[1]["retries"] != "0"
