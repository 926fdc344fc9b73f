"""The HAProxy renderer and runtime commands against a real HAProxy (Debian's 2.6)."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from elastin.mesh.haproxy.process import check_config, haproxy_binary, runtime
from elastin.mesh.haproxy.render import Paths, render
from elastin.mesh.haproxy.runtime import runtime_commands
from elastin.mesh.model import (
    CircuitBreaker,
    Cluster,
    Endpoint,
    Fault,
    Listener,
    MeshSnapshot,
    diff,
)

HAPROXY = haproxy_binary()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (make test installs it)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def backend(name: str) -> Iterator[int]:
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = name.encode()
            self.send_response(200)
            self.send_header("x-seen-traceparent", self.headers.get("traceparent", ""))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


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
        fault=Fault(abort_status=503, abort_percent=10),
    )
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        render(
            MeshSnapshot(1, "n1", (lst,), (c,), metrics_port=9101), Paths(str(tmp_path / "rt.sock"))
        )
    )
    assert HAPROXY is not None
    check_config(str(cfg), HAPROXY)


def test_traffic_flows_and_endpoints_change_without_reload(tmp_path: Path) -> None:
    assert HAPROXY is not None
    with backend("one") as p1, backend("two") as p2:
        listen = free_port()
        sock = str(tmp_path / "rt.sock")
        e1 = Endpoint("a1-http", "127.0.0.1", p1)
        first = MeshSnapshot(
            1,
            "n1",
            (Listener("caller.web", listen, "shop.web.http"),),
            (Cluster("shop.web.http", endpoints=(e1,)),),
        )
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(render(first, Paths(sock)))
        check_config(str(cfg), HAPROXY)
        proc = subprocess.Popen(
            [HAPROXY, "-W", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(sock) and time.monotonic() < deadline:
                time.sleep(0.05)
            url = f"http://127.0.0.1:{listen}/"

            def get() -> str:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return r.read().decode()

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError, urllib.error.URLError):
                    if get() == "one":
                        break
                time.sleep(0.05)
            assert {get() for _ in range(4)} == {"one"}
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
            second = MeshSnapshot(
                2, "n1", first.listeners, (Cluster("shop.web.http", endpoints=(e1, e2)),)
            )
            d = diff(first, second)
            assert not d.reload
            now, _ = runtime_commands(d, second)
            for cmd in now:
                runtime(sock, cmd)
            assert {get() for _ in range(10)} == {"one", "two"}
            # take the first out: only "two" answers; then delete it
            third = MeshSnapshot(
                3, "n1", first.listeners, (Cluster("shop.web.http", endpoints=(e2,)),)
            )
            now, later = runtime_commands(diff(second, third), third)
            for cmd in now:
                runtime(sock, cmd)
            assert {get() for _ in range(6)} == {"two"}
            time.sleep(0.2)
            for cmd in later:
                runtime(sock, cmd)
            assert "e_a1-http" not in runtime(sock, "show servers state c_shop.web.http")
            # nothing ready: a 503 that names the service
            runtime(sock, "set server c_shop.web.http/e_a2-http state maint")
            with pytest.raises(urllib.error.HTTPError) as err:
                get()
            assert err.value.code == 503
            assert "shop.web.http" in err.value.headers.get("x-elastin-error", "")
        finally:
            proc.terminate()
            proc.wait(10)


def test_rate_limit_answers_429_naming_the_service(tmp_path: Path) -> None:
    assert HAPROXY is not None
    with backend("one") as p1:
        listen = free_port()
        sock = str(tmp_path / "rt.sock")
        snap = MeshSnapshot(
            1,
            "n1",
            (Listener("caller.web", listen, "shop.web.http"),),
            (
                Cluster(
                    "shop.web.http", rate_limit=3, endpoints=(Endpoint("a1-http", "127.0.0.1", p1),)
                ),
            ),
        )
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(render(snap, Paths(sock)))
        check_config(str(cfg), HAPROXY)
        proc = subprocess.Popen(
            [HAPROXY, "-W", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(sock) and time.monotonic() < deadline:
                time.sleep(0.05)
            statuses: list[int] = []
            headers: list[str] = []
            for _ in range(10):  # bounded burst, well within one second
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{listen}/", timeout=5) as r:
                        statuses.append(r.status)
                except urllib.error.HTTPError as e:
                    statuses.append(e.code)
                    headers.append(e.headers.get("x-elastin-error", ""))
                except urllib.error.URLError:
                    time.sleep(0.05)  # not listening yet
            assert 200 in statuses and 429 in statuses, statuses
            assert all("shop.web.http" in h and "3/s" in h for h in headers)
        finally:
            proc.terminate()
            proc.wait(10)
