"""Scale to zero in a real HAProxy (review of issue #13, finding 7): the wake action of
``LUA_SCRIPT`` in a caller's frontend, driven through ``meshproxy`` as the agent drives it. A
held request tells the wake URL and is let go once a server of the service comes up (added
through the runtime API, as endpoint churn); past ``hold_max`` held requests the next one
gets the named 503 at once; a request held past ``hold_timeout`` gets the other named 503.
What a client that gave up does to the count (finding 5) is shown, not assumed."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from meshproxy import MeshProxy, free_port, get, http_backend, needs_haproxy, serve_http

from elastin.mesh.haproxy.render import Paths
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot

pytestmark = [pytest.mark.integration, needs_haproxy]

WAIT = 20.0  # a bound on waiting for an event (never a measurement)


class Wakes:
    """The node's wake listener, as the agent serves it: records every wake's query."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.event = threading.Condition()

    def wait(self, count: int, held: int = 0) -> None:
        """Until ``count`` wakes came (and, with ``held``, one telling that many held)."""
        with self.event:
            ok = self.event.wait_for(
                lambda: (
                    len(self.seen) >= count
                    and (not held or any(f"held={held}" in s for s in self.seen))
                ),
                WAIT,
            )
        assert ok, self.seen


@contextlib.contextmanager
def wake_listener() -> Iterator[tuple[Wakes, str]]:
    wakes = Wakes()

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            with wakes.event:
                wakes.seen.append(self.path)
                wakes.event.notify_all()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    with serve_http(H) as port:
        yield wakes, f"http://127.0.0.1:{port}/v1/mesh/wake/k"


def snapshot(port: int, endpoints: tuple[Endpoint, ...] = (), **hold: object) -> MeshSnapshot:
    c = Cluster("a.w.http", endpoints=endpoints, scale_to_zero=True, **hold)  # type: ignore[arg-type]
    return MeshSnapshot(1, "n1", (Listener("c.w", port, "a.w.http"),), (c,))


def start(tmp_path: Path, snap: MeshSnapshot, wake_url: str) -> MeshProxy:
    class WakingProxy(MeshProxy):
        def _text(self, s: MeshSnapshot) -> str:
            from elastin.mesh.haproxy.render import render

            paths: Paths = replace(self.process.paths(), wake_url=wake_url)
            return render(s, paths)

    return WakingProxy(tmp_path / "mesh", snap)


def in_background(url: str, timeout: float = WAIT) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(get(url, timeout=timeout)), daemon=True)
    t.start()
    return t, out


def test_a_held_request_is_let_go_when_a_server_comes_up(tmp_path: Path) -> None:
    port = free_port()
    with wake_listener() as (wakes, url):
        proxy = start(tmp_path, snapshot(port, hold_timeout=WAIT), url)
        try:
            t, out = in_background(proxy.url(port))
            wakes.wait(1, held=1)  # held, and the agent told
            assert t.is_alive()
            with http_backend("w1") as backend:
                ep = Endpoint("w1-p", "127.0.0.1", backend)
                proxy.apply(snapshot(port, (ep,), hold_timeout=WAIT))
                assert proxy.reloads == 0  # endpoint churn: through the runtime API
                t.join(WAIT)
                assert out == [(200, "w1")]
                assert get(proxy.url(port)) == (200, "w1")  # warm: no hold
        finally:
            proxy.stop()


def test_too_many_held_and_held_too_long_get_the_named_503s(tmp_path: Path) -> None:
    port = free_port()
    with wake_listener() as (wakes, url):
        proxy = start(tmp_path, snapshot(port, hold_timeout=4.0, hold_max=2), url)
        try:
            held = [in_background(proxy.url(port)) for _ in range(2)]
            wakes.wait(2, held=2)  # both held (a wake tells the count, once a second)
            status, body = get(proxy.url(port))
            assert status == 503 and "too many requests held for a.w.http" in body
            assert "(at most 2)" in body
            for t, out in held:
                t.join(WAIT)
                ((status, body),) = out  # type: ignore[misc]
                assert status == 503 and "no replica of a.w.http started within 4000ms" in body
        finally:
            proxy.stop()


def abandon(port: int, reset: bool) -> None:
    """A client that sends its request and goes away: a FIN, or a reset (``reset``)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_what_an_abandoned_held_request_does_to_hold_max(tmp_path: Path, reset: bool) -> None:
    """Finding 5: does a client that gave up keep its slot until the hold timeout? Two held
    requests abandoned (hold_max 2), then a third: held (the slots came back) or refused
    (they count until their timeout). docs/autoscaling.md says which; this pins it."""
    port = free_port()
    with wake_listener() as (wakes, url):
        proxy = start(tmp_path, snapshot(port, hold_timeout=WAIT, hold_max=2), url)
        try:
            abandon(port, reset)
            abandon(port, reset)
            wakes.wait(2, held=2)  # a second after the clients left, both still held
            status, body = get(proxy.url(port), timeout=WAIT)
            assert status == 503 and "too many requests held" in body
        finally:
            proxy.stop()
