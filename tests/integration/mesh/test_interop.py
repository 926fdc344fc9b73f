"""Interoperability of the mesh's data plane with real clients and servers.

Each test starts a real HAProxy from a ``MeshSnapshot`` (rendered by Elastin, started the way
the agent starts it) and drives it with an off-the-shelf client against an off-the-shelf
backend, all on 127.0.0.1:

* curl, HTTP/1.1: keep-alive reuse of one client connection and a chunked response;
* curl, HTTP/2 with prior knowledge (h2c) to an nginx h2c backend;
* grpcio client and server: unary call, server and client streaming, a lock-step
  bidirectional stream, and an error status with its details and trailing metadata;
* HTTP/2 balanced per request: one gRPC channel's calls reach both endpoints;
* a WebSocket (``websockets``) echo through an HTTP/1.1 listener (Upgrade);
* wrk (HTTP/1.1 load) and h2load (HTTP/2 load) against nginx, with bounded counts and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import queue
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import grpc
import pytest
from meshproxy import MeshProxy, free_port, needs_haproxy, serve_http
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot
from elastin.model.workload import Protocol

pytestmark = [pytest.mark.integration, needs_haproxy]
Start = Callable[[MeshSnapshot], MeshProxy]

SBIN = "/usr/sbin:/usr/local/sbin:/usr/bin:/bin"
NGINX_BODY = "nginx-h2\n"


def require(binary: str) -> str:
    """The path of ``binary`` (also looked up in the sbin directories), else skip the test."""
    path = shutil.which(binary) or shutil.which(binary, path=SBIN)
    if path is None:
        pytest.skip(f"{binary} is not installed; this interoperability test needs it")
    return path


def snapshot(listen: int, backend: int, protocol: Protocol) -> MeshSnapshot:
    """One listener on 127.0.0.1:``listen`` to one endpoint on 127.0.0.1:``backend``."""
    name = f"interop.svc.{protocol}"
    cluster = Cluster(
        name, protocol=protocol, endpoints=(Endpoint("a1-svc", "127.0.0.1", backend),)
    )
    listener = Listener(f"caller.{protocol}", listen, name, protocol=protocol)
    return MeshSnapshot(1, "n1", (listener,), (cluster,))


def run(argv: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


# --- backends -----------------------------------------------------------------------------


@contextlib.contextmanager
def nginx(directory: Path, *, http2: bool) -> Iterator[int]:
    """An nginx in the foreground (no master, no daemon) on a free loopback port answering
    every request with ``NGINX_BODY``; ``http2``: h2c with prior knowledge, else HTTP/1.1."""
    binary = require("nginx")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    d = str(directory)
    listen = f"127.0.0.1:{port}" + (" http2" if http2 else "")
    (directory / "nginx.conf").write_text(
        f"""daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {listen};
        location / {{
            default_type text/plain;
            return 200 "{NGINX_BODY.strip()}\\n";
        }}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        [binary, "-p", d, "-e", f"{d}/error.log", "-c", f"{d}/nginx.conf"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                log = (directory / "error.log").read_text(errors="replace")
                raise AssertionError(f"nginx exited with {proc.returncode}:\n{log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx does not listen on 127.0.0.1:{port}")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


CHUNKS = [b"first chunk\n", b"x" * 100_000 + b"\n", b"third\n", b"y" * 7_000 + b"\n", b"end\n"]


@contextlib.contextmanager
def chunked_backend() -> Iterator[int]:
    """HTTP/1.1 on a free loopback port: ``/chunked`` answers ``CHUNKS`` with
    ``Transfer-Encoding: chunked`` (one write per chunk, with pauses); any other path
    answers ``plain`` with a ``Content-Length``."""

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            if self.path != "/chunked":
                self.send_header("Content-Length", "6")
                self.end_headers()
                self.wfile.write(b"plain\n")
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in CHUNKS:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.02)
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *_: object) -> None:
            pass

    with serve_http(H) as port:
        yield port


# --- curl ---------------------------------------------------------------------------------


def test_curl_http11_keep_alive_and_chunked_response(mesh_proxy: Start) -> None:
    curl = require("curl")
    with chunked_backend() as backend:
        listen = free_port()
        proxy = mesh_proxy(snapshot(listen, backend, "http"))
        out = subprocess.run(
            [
                curl,
                "-sv",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                "--http1.1",
                proxy.url(listen, "/plain"),
                proxy.url(listen, "/chunked"),
            ],
            capture_output=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
    err = out.stderr.decode(errors="replace")
    assert out.returncode == 0, err
    # the second request went over the first one's client connection
    assert "Re-using existing connection" in err, err
    assert err.count("> GET /") == 2, err
    # the chunked response stayed chunked through the proxy and arrived whole
    assert re.search(r"^< transfer-encoding: chunked", err, re.I | re.M), err
    assert out.stdout == b"plain\n" + b"".join(CHUNKS)


def test_curl_http2_prior_knowledge_to_h2c_backend(mesh_proxy: Start, tmp_path: Path) -> None:
    curl = require("curl")
    with nginx(tmp_path / "nginx", http2=True) as backend:
        listen = free_port()
        proxy = mesh_proxy(snapshot(listen, backend, "http2"))
        body = tmp_path / "body"
        out = run(
            [
                curl,
                "-s",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                "--http2-prior-knowledge",
                "-o",
                str(body),
                "-w",
                "%{http_version}",
                proxy.url(listen),
            ]
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "2"
    assert body.read_text() == NGINX_BODY


# --- gRPC ---------------------------------------------------------------------------------


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    yield from requests


def _count_to(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(int(request)):  # server streaming
        yield str(i).encode()


def _total(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    return str(sum(int(r) for r in requests)).encode()  # client streaming


def _missing(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-elastin-test", "trailer-value"),))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())
    raise AssertionError("abort returned")  # abort raises


@contextlib.contextmanager
def grpc_backend() -> Iterator[int]:
    """A gRPC server on a free loopback port with ``/test.Echo/{Unary,Bidi,CountTo,Total,
    Missing}`` — every streaming kind — on raw bytes (generic handlers, no codegen)."""
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
            "CountTo": grpc.unary_stream_rpc_method_handler(_count_to),
            "Total": grpc.stream_unary_rpc_method_handler(_total),
            "Missing": grpc.unary_unary_rpc_method_handler(_missing),
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def test_grpc_unary_bidi_stream_and_error_status(mesh_proxy: Start) -> None:
    with grpc_backend() as backend:
        listen = free_port()
        mesh_proxy(snapshot(listen, backend, "grpc"))
        channel = grpc.insecure_channel(
            f"127.0.0.1:{listen}", options=[("grpc.enable_http_proxy", 0)]
        )
        with channel:
            grpc.channel_ready_future(channel).result(timeout=5)

            unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/test.Echo/Unary", request_serializer=None, response_deserializer=None
            )
            assert unary(b"ping", timeout=5) == b"echo:ping"

            # lock-step: message i+1 is sent only once the echo of message i came back, so
            # the stream is really streamed both ways through the proxy, not buffered
            bidi: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
                "/test.Echo/Bidi", request_serializer=None, response_deserializer=None
            )
            outgoing: queue.Queue[bytes | None] = queue.Queue()

            def requests() -> Iterator[bytes]:
                while (item := outgoing.get(timeout=10)) is not None:
                    yield item

            responses = bidi(requests(), timeout=15)
            got: list[bytes] = []
            for i in range(20):
                msg = f"message-{i:02d}".encode()
                outgoing.put(msg)
                got.append(next(responses))
                assert got[-1] == msg
            outgoing.put(None)
            assert list(responses) == []
            assert got == [f"message-{i:02d}".encode() for i in range(20)]

            count_to: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                "/test.Echo/CountTo"
            )
            assert [int(x) for x in count_to(b"50", timeout=5)] == list(range(50))
            total: grpc.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
                "/test.Echo/Total"
            )
            assert total(iter([b"1", b"2", b"39"]), timeout=5) == b"42"

            missing: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/test.Echo/Missing", request_serializer=None, response_deserializer=None
            )
            with pytest.raises(grpc.RpcError) as raised:
                missing(b"thing-7", timeout=5)
            call = cast(grpc.Call, raised.value)
            assert call.code() == grpc.StatusCode.NOT_FOUND, call.details()
            assert call.details() == "no such thing: thing-7"
            assert ("x-elastin-test", "trailer-value") in tuple(call.trailing_metadata() or ())


# --- WebSocket ----------------------------------------------------------------------------


async def test_websocket_echo_through_http_listener(mesh_proxy: Start) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with asyncio.timeout(20), ws_serve(echo, "127.0.0.1", 0) as server:
        backend = next(iter(server.sockets)).getsockname()[1]
        listen = free_port()
        # starting HAProxy blocks: keep the event loop (the WebSocket server) running
        proxy = await asyncio.to_thread(mesh_proxy, snapshot(listen, backend, "http"))
        url = proxy.url(listen, "/echo").replace("http://", "ws://")
        async with ws_connect(url, proxy=None, open_timeout=5) as ws:
            for i in range(10):
                text = f"hello {i}"
                await ws.send(text)
                assert await ws.recv() == text
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"


# --- load: wrk (HTTP/1.1) and h2load (HTTP/2) ---------------------------------------------


def test_wrk_http11_load(mesh_proxy: Start, tmp_path: Path) -> None:
    wrk = require("wrk")
    with nginx(tmp_path / "nginx", http2=False) as backend:
        listen = free_port()
        proxy = mesh_proxy(snapshot(listen, backend, "http"))
        out = run([wrk, "-t1", "-c10", "-d2s", "--timeout", "5s", proxy.url(listen)])
    assert out.returncode == 0, out.stdout + out.stderr
    done = re.search(r"^\s*(\d+) requests in ", out.stdout, re.M)
    assert done is not None, out.stdout
    assert int(done.group(1)) > 0, out.stdout
    assert "Non-2xx" not in out.stdout, out.stdout
    assert "Socket errors" not in out.stdout, out.stdout


def test_h2load_http2_load(mesh_proxy: Start, tmp_path: Path) -> None:
    h2load = require("h2load")
    with nginx(tmp_path / "nginx", http2=True) as backend:
        listen = free_port()
        proxy = mesh_proxy(snapshot(listen, backend, "http2"))
        out = run([h2load, "-n", "2000", "-c", "10", "-m", "10", proxy.url(listen)], 30)
    assert out.returncode == 0, out.stdout + out.stderr
    line = re.search(r"^requests: .*$", out.stdout, re.M)
    assert line is not None, out.stdout
    assert "2000 succeeded, 0 failed" in line.group(0), out.stdout
    assert re.search(r"^status codes: 2000 2xx", out.stdout, re.M), out.stdout


def test_http2_is_balanced_per_request_not_per_connection(mesh_proxy: Start) -> None:
    """One client connection (one gRPC channel) to the listener; its calls spread over both
    endpoints, because HAProxy balances each HTTP/2 stream."""
    servers = []
    ports = []
    for name in (b"a", b"b"):

        def whoami(_: bytes, __: grpc.ServicerContext, name: bytes = name) -> bytes:
            return name

        server = grpc.server(ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Who", {"Ami": grpc.unary_unary_rpc_method_handler(whoami)}
                ),
            )
        )
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        servers.append(server)
    try:
        listen = free_port()
        cluster = Cluster(
            "interop.who.grpc",
            protocol="grpc",
            endpoints=tuple(Endpoint(f"w{i}-grpc", "127.0.0.1", p) for i, p in enumerate(ports)),
        )
        listener = Listener("caller.who", listen, "interop.who.grpc", protocol="grpc")
        mesh_proxy(MeshSnapshot(1, "n1", (listener,), (cluster,)))
        with grpc.insecure_channel(f"127.0.0.1:{listen}") as channel:
            grpc.channel_ready_future(channel).result(timeout=5)
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Who/Ami")
            answers = {call(b"", timeout=5) for _ in range(20)}
        assert answers == {b"a", b"b"}
    finally:
        for server in servers:
            server.stop(grace=None)
