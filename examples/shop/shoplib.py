"""The little HTTP and gRPC toolkit the shop's services share (standard library + grpcio).

``serve(name, routes, port)`` runs a threaded HTTP server on 127.0.0.1 that dispatches
``(method, path)`` to handlers returning ``(status, json body)`` (``dispatch``: a path matches
a route exactly, or a route ending in ``/<id>`` with one more segment; anything else is a 404,
a known path with another method a 405), logs one line per request — and one line, not a
traceback, for a connection the client reset — and on SIGTERM or SIGINT stops accepting,
finishes in-flight requests and exits 0. ``upstream_url(service, default)`` finds where to
call a service (the mesh listener Elastin passes in ``ELASTIN_UPSTREAM_<SERVICE>_URL`` when the
spec names it in ``upstreams``). ``call(upstream, url, ...)`` makes an upstream call and turns
failures into ``UpstreamError`` (with the upstream's HTTP status, when it answered one), which
``serve`` answers with a 502 naming the upstream.

gRPC: ``serve_grpc(name, service, methods, port)`` runs a grpcio server whose unary methods
take and return JSON documents (a gRPC codec of our choosing, so no code generation), plus
the standard ``grpc.health.v1.Health/Check``; ``grpc_call(upstream, target, method, body)``
calls one, through ``upstream_addr`` (``ELASTIN_UPSTREAM_<SERVICE>``, host:port).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

Handler = Callable[[str, Any], tuple[int, Any]]  # (path, json body or None) -> (status, body)


class UpstreamError(Exception):
    """A failed call to ``upstream``; ``status`` is the HTTP status it answered (0: none)."""

    def __init__(self, upstream: str, reason: str, status: int = 0) -> None:
        super().__init__(f"{upstream}: {reason}")
        self.upstream = upstream
        self.reason = reason
        self.status = status


def upstream_url(service: str, default: str) -> str:
    """Where to call ``service``: the mesh listener Elastin gives this instance
    (``ELASTIN_UPSTREAM_<SERVICE>_URL``), else ``<SERVICE>_URL``, else ``default``."""
    key = service.upper().replace("-", "_")
    url = os.environ.get(f"ELASTIN_UPSTREAM_{key}_URL") or os.environ.get(f"{key}_URL")
    return (url or default).rstrip("/")


def upstream_addr(service: str, default: str) -> str:
    """``host:port`` of ``service`` for non-HTTP/1 clients (gRPC): ``ELASTIN_UPSTREAM_<SERVICE>``
    (the same mesh listener as the URL form), else ``default``."""
    key = service.upper().replace("-", "_")
    return os.environ.get(f"ELASTIN_UPSTREAM_{key}") or default


def call(upstream: str, url: str, body: Any = None, timeout: float = 2.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="POST" if data else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        raise UpstreamError(upstream, f"HTTP {e.code} from {url}", e.code) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UpstreamError(upstream, f"{reason} ({url})") from None


Routes = dict[tuple[str, str], Handler]


def dispatch(routes: Routes, method: str, target: str, body: Any) -> tuple[int, Any]:
    """Answer ``method target`` from ``routes``: ``(method, "/path")`` matches that path
    exactly (the query string aside); ``(method, "/path/<id>")`` matches ``/path/`` and one
    more segment. The handler is called with the path; an ``UpstreamError`` becomes a 502
    naming the upstream, any other error a 500. No route: 404; another method's: 405."""
    path = urllib.parse.urlsplit(target).path or "/"
    methods = set()
    for (m, pattern), fn in routes.items():
        if not _matches(pattern, path):
            continue
        if m != method:
            methods.add(m)
            continue
        try:
            return fn(path, body)
        except UpstreamError as e:
            return 502, {"error": "upstream failed", "upstream": e.upstream, "reason": e.reason}
        except Exception as e:  # a bug answers 500 and the process goes on serving
            return 500, {"error": f"{type(e).__name__}: {e}"}
    if methods:
        return 405, {"error": f"{method} is not allowed on {path}", "allow": sorted(methods)}
    return 404, {"error": f"no route for {method} {path}"}


def _matches(pattern: str, path: str) -> bool:
    if pattern.endswith("/<id>"):
        prefix = pattern[: -len("<id>")]
        rest = path[len(prefix) :]
        return path.startswith(prefix) and rest != "" and "/" not in rest
    return path == pattern


class ShopServer(ThreadingHTTPServer):
    """The shop's HTTP server: a connection the client broke (a health check that resets its
    connection, a caller gone) is logged as one line, never as a traceback."""

    name = "shop"

    def handle_error(self, request: Any, client_address: Any) -> None:
        _, err, _ = sys.exc_info()
        print(f"{self.name}: {describe_error(err, client_address)}", flush=True)


def describe_error(err: BaseException | None, client_address: Any) -> str:
    """One line for an error on a connection from ``client_address``."""
    peer = ":".join(str(p) for p in client_address) if client_address else "a client"
    if isinstance(err, ConnectionResetError):
        return f"connection from {peer} reset by the client"
    if isinstance(err, BrokenPipeError | ConnectionAbortedError):
        return f"connection from {peer} closed before the answer was sent"
    return f"error on the connection from {peer}: {type(err).__name__}: {err}"


def make_server(name: str, routes: Routes, port: int) -> ShopServer:
    """An HTTP server on 127.0.0.1:``port`` (0: any free port) answering ``routes``."""

    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self, method: str) -> None:
            t0 = time.perf_counter()
            body: Any = None
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    self._send(400, {"error": "the body is not JSON"}, t0)
                    return
            status, out = dispatch(routes, method, self.path, body)
            self._send(status, out, t0)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def _send(self, status: int, out: Any, t0: float) -> None:
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            ms = (time.perf_counter() - t0) * 1000
            print(f"{name} {self.command} {self.path} {status} {ms:.1f}ms", flush=True)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request is printed by _send

    server = ShopServer(("127.0.0.1", port), RequestHandler)
    server.name = name
    server.daemon_threads = False
    server.block_on_close = True  # shutdown waits for in-flight requests
    return server


def serve(name: str, routes: Routes, default_port: int) -> None:
    port = int(os.environ.get("PORT", default_port))
    server = make_server(name, routes, port)

    def stop(signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{name} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    print(f"{name} stopped", flush=True)
    sys.exit(0)


# gRPC ----------------------------------------------------------------------------------------
GrpcHandler = Callable[[Any], Any]  # json body -> json answer; raise GrpcFailure to fail
_channels: dict[str, grpc.Channel] = {}
_channels_lock = threading.Lock()


class GrpcFailure(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _decode(data: bytes) -> Any:
    return json.loads(data or b"null")


def _channel(target: str) -> grpc.Channel:
    with _channels_lock:
        channel = _channels.get(target)
        if channel is None:
            channel = _channels[target] = grpc.insecure_channel(target)
        return channel


def grpc_call(upstream: str, target: str, method: str, body: Any, timeout: float = 2.0) -> Any:
    """Call unary ``method`` (``/package.Service/Method``) on ``target`` (host:port)."""
    stub: grpc.UnaryUnaryMultiCallable[Any, Any] = _channel(target).unary_unary(
        method, request_serializer=_encode, response_deserializer=_decode
    )
    return _unary(upstream, method, stub, body, timeout)


def grpc_serving(upstream: str, target: str, timeout: float = 2.0) -> bool:
    """The standard gRPC health check of the whole server: True when SERVING."""
    method = "/grpc.health.v1.Health/Check"
    stub: grpc.UnaryUnaryMultiCallable[bytes, bytes] = _channel(target).unary_unary(method)
    return bool(_unary(upstream, method, stub, b"", timeout) == b"\x08\x01")


def _unary(
    upstream: str, method: str, stub: grpc.UnaryUnaryMultiCallable[Any, Any], body: Any, t: float
) -> Any:
    try:
        return stub(body, timeout=t)
    except grpc.RpcError as e:
        code = e.code().name if isinstance(e, grpc.Call) else "UNKNOWN"
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        raise UpstreamError(upstream, f"gRPC {code} from {method}: {details}") from None


def serve_grpc(name: str, service: str, methods: dict[str, GrpcHandler], default_port: int) -> None:
    """Serve ``methods`` of ``service`` (e.g. ``shop.Inventory``) and grpc.health.v1 until
    SIGTERM or SIGINT, then finish in-flight calls (up to 5 s) and exit 0."""
    port = int(os.environ.get("PORT", default_port))

    def unary(method: str, fn: GrpcHandler) -> grpc.RpcMethodHandler[Any, Any]:
        def handle(body: Any, context: grpc.ServicerContext) -> Any:
            t0 = time.perf_counter()
            try:
                out = fn(body)
                code = "OK"
            except GrpcFailure as e:
                print(f"{name} {method} {e.code.name} {e}", flush=True)
                context.abort(e.code, str(e))
            ms = (time.perf_counter() - t0) * 1000
            print(f"{name} {method} {code} {ms:.1f}ms", flush=True)
            return out

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=_decode, response_serializer=_encode
        )

    def health(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        return b"\x08\x01"  # HealthCheckResponse{status: SERVING}

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                service, {m: unary(m, fn) for m, fn in methods.items()}
            ),
            grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(health)}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    stopping = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    print(f"{name} (gRPC {service}) listening on 127.0.0.1:{port}", flush=True)
    stopping.wait()
    server.stop(grace=5).wait()
    print(f"{name} stopped", flush=True)
    sys.exit(0)
