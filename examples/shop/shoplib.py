"""The little HTTP and gRPC toolkit the shop's services share (standard library + grpcio).

``serve(name, routes, port)`` runs a threaded HTTP server on 127.0.0.1 that dispatches
``(method, path prefix)`` to handlers returning ``(status, json body)``, logs one line per
request, and on SIGTERM or SIGINT stops accepting, finishes in-flight requests and exits 0.
``upstream_url(service, default)`` finds where to call a service (the mesh listener Elastin
passes in ``ELASTIN_UPSTREAM_<SERVICE>_URL`` when the spec names it in ``upstreams``).
``call(upstream, url, ...)`` makes an upstream call and turns failures into ``UpstreamError``,
which ``serve`` answers with a 502 naming the upstream.

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
import urllib.request
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

Handler = Callable[[str, Any], tuple[int, Any]]  # (path, json body or None) -> (status, body)


class UpstreamError(Exception):
    def __init__(self, upstream: str, reason: str) -> None:
        super().__init__(f"{upstream}: {reason}")
        self.upstream = upstream
        self.reason = reason


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
        raise UpstreamError(upstream, f"HTTP {e.code} from {url}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UpstreamError(upstream, f"{reason} ({url})") from None


def serve(name: str, routes: dict[tuple[str, str], Handler], default_port: int) -> None:
    port = int(os.environ.get("PORT", default_port))

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
            for (m, prefix), fn in routes.items():
                if m == method and (
                    self.path == prefix or (prefix.endswith("/") and self.path.startswith(prefix))
                ):
                    try:
                        status, out = fn(self.path, body)
                    except UpstreamError as e:
                        status, out = (
                            502,
                            {
                                "error": "upstream failed",
                                "upstream": e.upstream,
                                "reason": e.reason,
                            },
                        )
                    self._send(status, out, t0)
                    return
            self._send(404, {"error": f"no route for {method} {self.path}"}, t0)

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

    server = ThreadingHTTPServer(("127.0.0.1", port), RequestHandler)
    server.daemon_threads = False
    server.block_on_close = True  # shutdown waits for in-flight requests

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
