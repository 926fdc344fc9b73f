"""The HAProxy renderer and runtime commands against a real HAProxy (Debian's 2.6)."""

from __future__ import annotations

import contextlib
import http.server
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from meshproxy import HAPROXY, MeshProxy, free_port, get, http_backend, needs_haproxy

from elastin.mesh.haproxy.process import check_config
from elastin.mesh.haproxy.render import LUA_SCRIPT, Paths, render
from elastin.mesh.model import (
    CircuitBreaker,
    Cluster,
    Endpoint,
    Fault,
    Listener,
    MeshSnapshot,
    RetryPolicy,
    Timeouts,
)

pytestmark = [pytest.mark.integration, needs_haproxy]
Start = Callable[[MeshSnapshot], MeshProxy]


@pytest.mark.parametrize(
    "lb", ["round_robin", "least_request", "least_conn", "hash_header", "hash_cookie"]
)
@pytest.mark.parametrize("protocol", ["http", "http2", "grpc", "tcp"])
def test_every_policy_and_protocol_renders_a_valid_config(
    tmp_path: Path, lb: str, protocol: str
) -> None:
    key = "x-user" if lb == "hash_header" else ("session" if lb == "hash_cookie" else "")
    c = Cluster(
        "app.svc.p",
        protocol=protocol,
        lb=lb,
        hash_key=key,  # type: ignore[arg-type]
        endpoints=(
            Endpoint("a1-p", "127.0.0.1", 9001),
            Endpoint("a2-p", "127.0.0.1", 9002, ready=False, local=True),
        ),
        breaker=CircuitBreaker(max_connections=100, max_queue=10),
    )
    lst = Listener(
        "caller.svc",
        20001,
        "app.svc.p",
        protocol=protocol,
        owner="app/caller",
        fault=Fault(abort_status=503, abort_percent=10, delay=0.5, delay_percent=20),
    )
    cfg = tmp_path / "haproxy.cfg"
    lua = tmp_path / "elastin.lua"
    lua.write_text(LUA_SCRIPT)
    paths = Paths(str(tmp_path / "rt.sock"), lua_file=str(lua))
    cfg.write_text(render(MeshSnapshot(1, "n1", (lst,), (c,), metrics_port=9101), paths))
    assert HAPROXY is not None
    check_config(str(cfg), HAPROXY)


def traced_web(*endpoints: Endpoint) -> Cluster:
    """shop.web.http, where every request without a traceparent starts a trace."""
    return Cluster("shop.web.http", endpoints=endpoints, trace_sample=1.0)


def test_traffic_flows_and_endpoints_change_without_reload(mesh_proxy: Start) -> None:
    with http_backend("one") as p1, http_backend("two") as p2:
        listen = free_port()
        e1 = Endpoint("a1-http", "127.0.0.1", p1)
        lst = (Listener("caller.web", listen, "shop.web.http"),)
        proxy = mesh_proxy(MeshSnapshot(1, "n1", lst, (traced_web(e1),)))
        url = proxy.url(listen)
        assert {get(url)[1] for _ in range(4)} == {"one"}
        # a trace is started when the caller sent none, and passed on when it did
        with urllib.request.urlopen(url, timeout=5) as r:
            tp = r.headers["x-seen-traceparent"]
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", tp), tp
        given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        req = urllib.request.Request(url, headers={"traceparent": given})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.headers["x-seen-traceparent"] == given
        # add an endpoint at run time: both now serve, no reload
        e2 = Endpoint("a2-http", "127.0.0.1", p2)
        proxy.apply(MeshSnapshot(2, "n1", lst, (traced_web(e1, e2),)))
        assert {get(url)[1] for _ in range(10)} == {"one", "two"}
        # take the first out: only "two" answers; then delete it
        proxy.apply(MeshSnapshot(3, "n1", lst, (traced_web(e2),)))
        assert {get(url)[1] for _ in range(6)} == {"two"}
        proxy.delete_drained()
        assert not proxy.pending_deletes
        assert "e_a1-http" not in proxy.send("show servers state c_shop.web.http")
        assert proxy.reloads == 0
        # nothing ready: a 503 that names the service
        proxy.send("set server c_shop.web.http/e_a2-http state maint")
        status, _ = get(url)
        assert status == 503
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=5)
        assert "shop.web.http" in err.value.headers.get("x-elastin-error", "")


def test_rate_limit_answers_429_naming_the_service(mesh_proxy: Start) -> None:
    with http_backend("one") as p1:
        listen = free_port()
        endpoints = (Endpoint("a1-http", "127.0.0.1", p1),)
        proxy = mesh_proxy(
            MeshSnapshot(
                1,
                "n1",
                (Listener("caller.web", listen, "shop.web.http"),),
                (Cluster("shop.web.http", rate_limit=3, endpoints=endpoints),),
            )
        )
        import urllib.error

        statuses: list[int] = []
        headers: list[str] = []
        for _ in range(10):  # bounded burst, well within one second
            try:
                with urllib.request.urlopen(proxy.url(listen), timeout=5) as r:
                    statuses.append(r.status)
            except urllib.error.HTTPError as e:
                statuses.append(e.code)
                headers.append(e.headers.get("x-elastin-error", ""))
        assert 200 in statuses and 429 in statuses, statuses
        assert all("shop.web.http" in h and "3/s" in h for h in headers)


def test_fault_injection_delays_and_aborts(mesh_proxy: Start) -> None:
    with http_backend("one") as p1:
        slow, broken = free_port(), free_port()
        cluster = Cluster("shop.web.http", endpoints=(Endpoint("a1-http", "127.0.0.1", p1),))
        proxy = mesh_proxy(
            MeshSnapshot(
                1,
                "n1",
                (
                    Listener(
                        "a.web", slow, "shop.web.http", fault=Fault(delay=0.3, delay_percent=100)
                    ),
                    Listener(
                        "b.web",
                        broken,
                        "shop.web.http",
                        fault=Fault(abort_status=418, abort_percent=100),
                    ),
                ),
                (cluster,),
            )
        )
        t0 = time.monotonic()
        assert get(proxy.url(slow)) == (200, "one")
        assert time.monotonic() - t0 >= 0.3  # held by the Lua delay
        status, body = get(proxy.url(broken))
        assert status == 418 and "fault injected" in body


def test_errors_haproxy_returns_name_the_service_and_why(mesh_proxy: Start) -> None:
    def slow(_: object) -> tuple[int, bytes]:
        time.sleep(1.0)
        return 200, b"late"

    with http_backend("slow", slow) as p_slow:
        closed, listen_a, listen_b = free_port(), free_port(), free_port()
        gone = (Endpoint("g1-http", "127.0.0.1", closed),)
        unreachable = Cluster("shop.gone.http", endpoints=gone)
        timing_out = Cluster(
            "shop.slow.http",
            endpoints=(Endpoint("s1-http", "127.0.0.1", p_slow),),
            timeouts=Timeouts(request=0.3),
            retries=RetryPolicy(attempts=0),
        )
        proxy = mesh_proxy(
            MeshSnapshot(
                1,
                "n1",
                (
                    Listener("a.gone", listen_a, "shop.gone.http"),
                    Listener("a.slow", listen_b, "shop.slow.http"),
                ),
                (unreachable, timing_out),
            )
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(proxy.url(listen_a), timeout=10)
        assert err.value.code == 503
        # "no endpoint of … took the request" while HAProxy still counts the endpoint
        # up, "no endpoint of … is up" once its checks failed: either way, named
        assert "of shop.gone.http" in err.value.headers["x-elastin-error"]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(proxy.url(listen_b), timeout=10)
        assert err.value.code == 504
        assert err.value.headers["x-elastin-error"] == (
            "no answer from an endpoint of shop.slow.http within 300ms"
        )


def test_raw_tcp_through_a_listener(mesh_proxy: Start) -> None:
    """A tcp port: bytes both ways, the connection balanced, nothing HTTP about it."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data.upper())

    def accept() -> None:  # ends when the test closes the listening socket
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        listen = free_port()
        cluster = Cluster(
            "shop.db.pg",
            protocol="tcp",
            endpoints=(Endpoint("d1-pg", "127.0.0.1", port),),
            access_log_sample=1.0,  # every connection, not only abnormal ones
        )
        proxy = mesh_proxy(
            MeshSnapshot(
                1, "n1", (Listener("a.db", listen, "shop.db.pg", protocol="tcp"),), (cluster,)
            )
        )
        for payload in (b"hello\n", b"x" * 200_000, b"\x00\x01binary\xff"):
            with socket.create_connection(("127.0.0.1", listen), timeout=5) as c:
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                got = b""
                while chunk := c.recv(65536):
                    got += chunk
            assert got == payload.upper()
        # every connection is a JSON line in the access log too
        lines = proxy.access_log(3, '"c_shop.db.pg"')
        assert any(x["bytes"] >= 200_000 and x["service"] == "c_shop.db.pg" for x in lines)
    finally:
        srv.close()
        t.join(5)


def test_circuit_breaker_queues_then_answers_503_naming_the_service(mesh_proxy: Start) -> None:
    def slow(_: object) -> tuple[int, bytes]:
        time.sleep(0.6)
        return 200, b"done"

    with http_backend("slow", slow) as port:
        listen = free_port()
        cluster = Cluster(
            "shop.pay.http",
            endpoints=(Endpoint("p1-http", "127.0.0.1", port),),
            breaker=CircuitBreaker(max_connections=1, max_queue=1, queue_timeout=0.3),
        )
        proxy = mesh_proxy(
            MeshSnapshot(1, "n1", (Listener("a.pay", listen, "shop.pay.http"),), (cluster,))
        )
        results: list[tuple[int, str]] = []

        def call() -> None:
            try:
                with urllib.request.urlopen(proxy.url(listen), timeout=10) as r:
                    results.append((r.status, ""))
            except urllib.error.HTTPError as e:
                results.append((e.code, e.headers.get("x-elastin-error", "")))

        threads = [threading.Thread(target=call) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
    statuses = sorted(s for s, _ in results)
    assert statuses.count(200) >= 1 and 503 in statuses, results
    # one at a time reaches the endpoint; the rest wait up to queue_timeout, then get a 503
    assert all("shop.pay.http" in why for s, why in results if s == 503)


def test_what_a_caller_sends_cannot_break_or_hide_its_access_log_line(
    mesh_proxy: Start,
) -> None:
    seen: list[str] = []

    def record(h: http.server.BaseHTTPRequestHandler) -> tuple[int, bytes]:
        seen.append(h.headers.get("traceparent", ""))
        return 200, b"ok"

    with http_backend("one", record) as port:
        listen = free_port()
        lst = (Listener("caller.web", listen, "shop.web.http", owner="shop/caller"),)
        cluster = Cluster(
            "shop.web.http",
            endpoints=(Endpoint("a1-http", "127.0.0.1", port),),
            access_log_sample=1.0,
            trace_sample=1.0,
        )
        proxy = mesh_proxy(MeshSnapshot(1, "n1", lst, (cluster,)))
        valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        requests = [
            (b'/a"b\\c]d?token=secret', b""),  # quote, backslash; the query is not logged
            (b"/t", b'traceparent: ev"il\\\r\n'),  # not a traceparent: a new trace
            (b"/v", f"traceparent: {valid}\r\n".encode()),  # a valid one is passed on
        ]
        for target, header in requests:
            with socket.create_connection(("127.0.0.1", listen), timeout=5) as c:
                c.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + header)
                c.sendall(b"Connection: close\r\n\r\n")
                assert c.recv(100).startswith(b"HTTP/1.1 200")
        lines = proxy.access_log(3)
        assert [x["path"] for x in lines] == ['/a"b\\c]d', "/t", "/v"]
        fresh = lines[1]["traceparent"]
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", fresh), fresh
        assert lines[2]["traceparent"] == valid
        assert seen[1:] == [fresh, valid]  # what the endpoint got is what was logged
