"""The little HTTP toolkit the shop's services share (standard library only).

``serve(name, routes, port)`` runs a threaded HTTP server on 127.0.0.1 that dispatches
``(method, path prefix)`` to handlers returning ``(status, json body)``, logs one line per
request, and on SIGTERM or SIGINT stops accepting, finishes in-flight requests and exits 0.
``upstream_url(service, default)`` finds where to call a service (the mesh listener Elastin
passes in ``ELASTIN_UPSTREAM_<SERVICE>_URL`` when the spec names it in ``upstreams``).
``call(upstream, url, ...)`` makes an upstream call and turns failures into ``UpstreamError``,
which ``serve`` answers with a 502 naming the upstream.
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
