"""Helpers of the real-HAProxy tests (imported as ``meshproxy``): a proxy started from a
``MeshSnapshot`` exactly as the agent starts it (``HaproxyProcess`` + ``render``), and small
HTTP backends.

``MeshProxy.apply(snapshot)`` moves the running proxy to a new snapshot the way the agent's
mesh manager does: runtime commands for endpoint churn, a hitless reload for anything
structural; ``reloads`` counts the reloads so tests can assert there were none. Its access
log is collected as the agent collects it (``AccessLogCollector``, in a process of its own)
into ``log``; ``start_collector`` returns once the collector follows the worker, so that a
test's requests are never made before anyone reads their lines (on a loaded machine the
collector's start can take longer than a test's first requests and a reload: the worker
those went to was then never followed, and its lines never collected).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from elastin.mesh.haproxy.process import HaproxyProcess, haproxy_binary
from elastin.mesh.haproxy.render import render
from elastin.mesh.haproxy.runtime import runtime_commands
from elastin.mesh.model import MeshSnapshot, diff

HAPROXY = haproxy_binary()
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (make test installs it)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class MeshProxy:
    """A real HAProxy driven like the agent drives it."""

    def __init__(self, directory: Path, snapshot: MeshSnapshot) -> None:
        assert HAPROXY is not None
        self.process = HaproxyProcess(directory, HAPROXY)
        self.current = snapshot
        self.pending_deletes: list[str] = []
        self.process.ensure(self._text(snapshot))
        self.log = directory / "haproxy.log"
        self.collector = self.start_collector()
        for lst in snapshot.listeners:
            wait_listening(lst.port)

    def start_collector(self, timeout: float = 30.0) -> subprocess.Popen[bytes]:
        """The agent's access log collector, in a process of its own; returns once it
        follows the worker (its CLI session is there beside the one asking)."""
        module = "elastin.mesh.haproxy.accesslog"
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(self.process.socket), str(self.log)]
        )
        deadline = time.monotonic() + timeout
        while self.cli_sessions() < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the access log collector did not attach to HAProxy")
            time.sleep(0.05)
        return proc

    def cli_sessions(self) -> int:
        """Sessions on the runtime API socket (this question's own among them)."""
        with contextlib.suppress(Exception):
            return sum("fe=GLOBAL" in x for x in self.process.send("show sess").splitlines())
        return 0

    def stop(self) -> None:
        self.collector.terminate()
        self.collector.wait(10)
        self.process.stop()

    def access_log(self, count: int, text: str = '"status":', timeout: float = 5.0) -> list[Any]:
        """The JSON lines of the access log, once ``count`` of them hold ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.log.read_text().count(text) >= count:
                    break
            time.sleep(0.05)
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.startswith("{")]

    def _text(self, snap: MeshSnapshot) -> str:
        return render(snap, self.process.paths())

    @property
    def reloads(self) -> int:
        return self.process.reloads

    def apply(self, snap: MeshSnapshot) -> None:
        d = diff(self.current, snap)
        if d.reload:
            self.process.ensure(self._text(snap))
            for lst in snap.listeners:
                wait_listening(lst.port)
        else:
            now, later = runtime_commands(d, snap)
            for cmd in now:
                self.process.send(cmd)
            self.pending_deletes += later
        self.current = snap

    def delete_drained(self) -> None:
        keep = []
        for cmd in self.pending_deletes:
            try:
                self.process.send(cmd)
            except Exception:
                keep.append(cmd)
        self.pending_deletes = keep

    def send(self, command: str) -> str:
        return self.process.send(command)

    def url(self, port: int, path: str = "/") -> str:
        return f"http://127.0.0.1:{port}{path}"


Handler = Callable[[http.server.BaseHTTPRequestHandler], tuple[int, bytes]]


@contextlib.contextmanager
def http_backend(name: str, handler: Handler | None = None) -> Iterator[int]:
    """A threaded HTTP/1.1 server on a free loopback port answering GET with ``name`` (or
    with what ``handler`` returns); it echoes the ``traceparent`` it saw."""

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            status, body = handler(self) if handler else (200, name.encode())
            self.send_response(status)
            self.send_header("x-seen-traceparent", self.headers.get("traceparent", ""))
            self.send_header("x-backend", name)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    with serve_http(H) as port:
        yield port


@contextlib.contextmanager
def serve_http(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve ``handler`` on a free loopback port from a thread; yields the port."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield int(srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, str]:
    """``(status, body)`` of a GET; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
