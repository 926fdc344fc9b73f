"""Reading application gauges from instances' Prometheus endpoints (``agent/gauges.py``)
against real sockets on 127.0.0.1: the values read, one GET per page, and each way a scrape
fails — refused, silent, not 200, too large, a name missing — leaving the gauge out, logged
at most once a minute per instance."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from elastin.agent import gauges, promtext
from elastin.agent.gauges import GaugeReader, scrape_timeout
from elastin.agent.promtext import Gauges, Stop, Stopped
from elastin.agent.sampling import Page, gauge_pages
from elastin.model.spec import parse_spec
from elastin.testing import FakeClock

PAGE = b'# TYPE queue_depth gauge\nqueue_depth{q="a"} 4\nqueue_depth{q="b"} 3\nworkers 2\n'
# the review's hostile page (issue #13): wanted lines a backtracking parser takes hours over,
# then a good one; just under the 1 MiB a scrape reads
HOSTILE = (b'queue_depth{a="b"' + b" " * 4000 + b"x\n") * 255 + b"queue_depth 5\n"


class Endpoint:
    """A tiny HTTP server: ``/metrics`` answers PAGE, ``/big`` a large page, ``/down`` 503,
    ``/silent`` nothing at all (until the test ends); records the requests' heads."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.done = asyncio.Event()
        self.gate = asyncio.Event()  # /late answers once it is set
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one connection may carry several requests
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                path = head.split(b" ")[1]
                if path == b"/silent":
                    await self.done.wait()
                    return
                if path == b"/late":
                    await self.gate.wait()
                status, body = {
                    b"/metrics": (b"200 OK", PAGE),
                    b"/metrics?slow": (b"200 OK", PAGE),
                    b"/late": (b"200 OK", PAGE),
                    b"/long": (b"200 OK", b"queue_depth 1\n" * 3 * promtext.CHECK_EVERY),
                    b"/big": (b"200 OK", b"queue_depth 1\n" + b"# pad\n" * 400_000),
                    b"/hostile": (b"200 OK", HOSTILE),
                    b"/down": (b"503 Service Unavailable", b"no"),
                }.get(path, (b"404 Not Found", b""))
                writer.write(
                    b"HTTP/1.1 "
                    + status
                    + b"\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    e = Endpoint()
    server = await asyncio.start_server(e.handle, "127.0.0.1", 0)
    e.port = server.sockets[0].getsockname()[1]
    try:
        yield e
    finally:
        e.done.set()
        server.close()
        await server.wait_closed()


async def test_gauges_are_read_per_instance_one_get_per_page(endpoint: Endpoint) -> None:
    reader = GaugeReader(FakeClock())
    try:
        got = await reader.read(
            {
                "a1": [Page(endpoint.port, "/metrics", ("queue_depth", "workers"))],
                "a2": [Page(endpoint.port, "/metrics", ("workers",))],
            },
            timeout=5,
        )
    finally:
        await reader.close()
    assert got == {"a1": {"queue_depth": 7.0, "workers": 2.0}, "a2": {"workers": 2.0}}
    assert len(endpoint.heads) == 2  # one GET per instance's page, whatever it reads
    head = endpoint.heads[0].lower()
    assert b"accept: text/plain;version=0.0.4" in head and b"elastin-gauges" in head
    assert b"accept-encoding: identity" in head


async def test_a_failed_scrape_leaves_the_gauge_out_and_says_why_once_a_minute(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    reader = GaugeReader(clock, max_bytes=1 << 20)
    free = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    refused = free.sockets[0].getsockname()[1]
    free.close()
    await free.wait_closed()  # nothing listens there any more
    pages = {
        "ok": [Page(endpoint.port, "/metrics", ("queue_depth",))],
        "refused": [Page(refused, "/metrics", ("queue_depth",))],
        "silent": [Page(endpoint.port, "/silent", ("queue_depth",))],
        "down": [Page(endpoint.port, "/down", ("queue_depth",))],
        "big": [Page(endpoint.port, "/big", ("queue_depth",))],
        "missing": [Page(endpoint.port, "/metrics", ("queue_depth", "nope"))],
    }
    try:
        with caplog.at_level(logging.WARNING, logger="elastin.agent.gauges"):
            got = await reader.read(pages, timeout=0.3)
        said = {r.getMessage().split()[1][:-1]: r.getMessage() for r in caplog.records}
        assert got == {"ok": {"queue_depth": 7.0}, "missing": {"queue_depth": 7.0}}
        assert set(said) == {"refused", "silent", "down", "big", "missing"}
        assert "Connection refused" in said["refused"]
        assert "no answer within 0.3s" in said["silent"]
        assert "HTTP 503" in said["down"]
        assert f"larger than {1 << 20} bytes" in said["big"]
        assert "no sample of nope in the page" in said["missing"]
        assert f"http://127.0.0.1:{endpoint.port}/down" in said["down"]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="elastin.agent.gauges"):
            await reader.read(pages, timeout=0.3)
        assert caplog.records == []  # within the minute: not said again
        clock.advance(61)
        with caplog.at_level(logging.WARNING, logger="elastin.agent.gauges"):
            await reader.read(pages, timeout=0.3)
        assert len(caplog.records) == 5  # a minute later: said again
    finally:
        await reader.close()


def test_the_timeout_is_half_the_interval_at_most_half_a_second() -> None:
    assert scrape_timeout(1.0) == 0.5
    assert scrape_timeout(0.5) == 0.25
    assert scrape_timeout(60) == 0.5


async def test_a_page_is_parsed_off_the_event_loop(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's loop also carries its heartbeats, API and mesh: while a hostile page is
    parsed, another coroutine runs. The parse waits for a coroutine to run, which it can only
    do when it is not on the loop itself (on the loop it would wait its 30 s out)."""
    parsing, loop_ran = threading.Event(), threading.Event()
    waited: list[bool] = []
    real = gauges.read_gauges

    def watched(text: str, names: Iterable[str], stop: Stop | None = None) -> Gauges:
        parsing.set()
        waited.append(loop_ran.wait(30))
        return real(text, names, stop=stop)

    async def another() -> None:
        while not parsing.is_set():
            await asyncio.sleep(0.01)
        loop_ran.set()

    monkeypatch.setattr(gauges, "read_gauges", watched)
    reader = GaugeReader(FakeClock())
    try:
        got, _ = await asyncio.gather(
            reader.read({"a1": [Page(endpoint.port, "/hostile", ("queue_depth",))]}, 60),
            asyncio.wait_for(another(), 60),
        )
    finally:
        loop_ran.set()
        await reader.close()
    assert waited == [True]  # the other coroutine ran during the parse
    assert got == {}  # the malformed lines spoil the gauge, and are said


def until_stopped(stop: Stop | None) -> bool:
    """Wait (30 s at most) until ``stop`` says stop; whether it did."""
    for _ in range(3000):
        if stop is not None and stop():
            return True
        time.sleep(0.01)
    return False


async def test_the_timeout_stops_the_parse_too(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A page being read when the timeout comes is stopped, not only given up on: the
    reader's thread would otherwise go on reading it (most of a second of a core for a MiB
    of wanted lines), holding the GIL the event loop needs. The real parse of a long page,
    held at its first question to ``stop`` until the reader no longer waits, stops there."""
    asked: list[bool] = []
    outcome: list[str] = []
    done = threading.Event()
    real = gauges.read_gauges
    clock = FakeClock()

    def held(text: str, names: Iterable[str], stop: Stop | None = None) -> Gauges:
        def first_held() -> bool:
            if not asked:
                clock.advance(0.3)  # the read takes the whole timeout (no sleeper to wake)
                asked.append(until_stopped(stop))
            return stop is not None and stop()

        try:
            got = real(text, names, stop=first_held)
            outcome.append(f"read to the end: {got}")
            return got
        except Stopped as e:
            outcome.append(f"stopped: {e}")
            raise
        finally:
            done.set()

    monkeypatch.setattr(gauges, "read_gauges", held)
    reader = GaugeReader(clock)
    page = Page(endpoint.port, "/long", ("queue_depth",))
    try:
        with caplog.at_level(logging.WARNING, logger="elastin.agent.gauges"):
            got = await reader.read({"a1": [page]}, 0.3)
        assert done.wait(30)
    finally:
        await reader.close()
    assert got == {}
    assert "the page was not read within 0.3s" in caplog.text
    assert asked == [True]  # the reader's stop said stop once its wait was over
    assert outcome == [f"stopped: stopped at line {promtext.CHECK_EVERY}"]


async def test_a_page_too_large_or_not_read_in_time_is_left_alone_for_a_while(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One such page would cost the agent up to the timeout of a core every interval: it is
    not asked for again for ``BACKOFF`` (its gauges missing meanwhile), said once in the
    log. A page that only waited behind it for the reader's thread is not blamed: read again
    at the next interval, as are the instance's other pages and the other instances."""
    real = gauges.read_gauges
    clock = FakeClock()
    loop = asyncio.get_running_loop()

    def slow(text: str, names: Iterable[str], stop: Stop | None = None) -> Gauges:
        if "slow" not in names:
            return real(text, names, stop=stop)
        clock.advance(0.3)  # the read takes the whole timeout (no sleeper to wake)
        loop.call_soon_threadsafe(endpoint.gate.set)  # /late comes now: it waits behind
        until_stopped(stop)
        raise Stopped("stopped")

    monkeypatch.setattr(gauges, "read_gauges", slow)
    reader = GaugeReader(clock)
    pages = {
        "big": [Page(endpoint.port, "/big", ("queue_depth",))],
        "slow": [Page(endpoint.port, "/metrics?slow", ("slow",))],
        "late": [Page(endpoint.port, "/late", ("queue_depth",))],
        "ok": [Page(endpoint.port, "/metrics", ("workers",))],
    }

    def gets(*paths: bytes) -> tuple[int, ...]:
        return tuple(sum(1 for h in endpoint.heads if h.startswith(b"GET %s " % p)) for p in paths)

    def said() -> dict[str, str]:
        return {r.getMessage().split()[1][:-1]: r.getMessage() for r in caplog.records}

    try:
        with caplog.at_level(logging.WARNING, logger="elastin.agent.gauges"):
            got = await reader.read(pages, 0.3)
        assert got.keys() <= {"ok"}  # (ok is read unless it too waited behind the slow one)
        assert said().keys() >= {"big", "slow", "late"}
        assert "larger than" in said()["big"]
        assert "not asked for again for 30s" in said()["big"]
        assert "not read within 0.3s" in said()["slow"]
        assert "not asked for again for 30s" in said()["slow"]
        assert "the reader was busy with other pages" in said()["late"]
        assert "not asked for again" not in said()["late"]  # not its fault
        assert gets(b"/big", b"/metrics?slow", b"/late") == (1, 1, 1)
        caplog.clear()
        for _ in range(3):  # within the backoff: neither page is asked for
            clock.advance(9)
            with caplog.at_level(logging.WARNING, logger="elastin.agent.gauges"):
                got = await reader.read(pages, 0.3)
            assert got == {"late": {"queue_depth": 7.0}, "ok": {"workers": 2.0}}
        assert gets(b"/big", b"/metrics?slow", b"/late") == (1, 1, 4)
        assert caplog.records == []  # said once, at its start
        clock.advance(3)  # the backoff is over: both asked for again
        with caplog.at_level(logging.WARNING, logger="elastin.agent.gauges"):
            await reader.read(pages, 0.3)
        assert gets(b"/big", b"/metrics?slow") == (2, 2)
    finally:
        await reader.close()


async def serve_h2c(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP/2-only endpoint without TLS (h2c, prior knowledge), as an ``http2`` port
    serves (the mesh speaks to it so): PAGE on every stream."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    try:
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    conn.send_headers(
                        event.stream_id,
                        [(":status", "200"), ("content-length", str(len(PAGE)))],
                    )
                    conn.send_data(event.stream_id, PAGE, end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
    except (ConnectionError, h2.exceptions.ProtocolError):
        pass
    finally:
        writer.close()


async def test_an_http2_port_is_read_with_http2(endpoint: Endpoint) -> None:
    """An application metric on an ``http2`` port (h2c) is read over HTTP/2; an ``http``
    port still over HTTP/1.1 (an HTTP/1.1 request to an h2c-only port is not answered)."""
    server = await asyncio.start_server(serve_h2c, "127.0.0.1", 0)
    h2c = server.sockets[0].getsockname()[1]
    reader = GaugeReader(FakeClock())
    try:
        got = await reader.read(
            {
                "a1": [Page(h2c, "/metrics", ("queue_depth",), http2=True)],
                "a2": [Page(endpoint.port, "/metrics", ("workers",))],
            },
            timeout=5,
        )
    finally:
        await reader.close()
        server.close()
        await server.wait_closed()
    assert got == {"a1": {"queue_depth": 7.0}, "a2": {"workers": 2.0}}


def test_the_pages_of_an_http2_port_say_so() -> None:
    spec = """app: a
services:
  web:
    command: x
    ports: {http: 0, metrics: {port: 0, protocol: http2}}
    autoscale:
      max: 3
      metrics: [{metric: q, target: 1, port: metrics}, {metric: r, target: 1, port: http}]
"""
    w = parse_spec(spec, file="t.yaml").workloads[0]
    assert gauge_pages(w, {"http": 8080, "metrics": 9090}) == (
        Page(9090, "/metrics", ("q",), http2=True),
        Page(8080, "/metrics", ("r",), http2=False),
    )


async def test_without_the_h2_package_an_http2_page_is_a_failed_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent installed without ``h2`` (an older environment) leaves the gauge out and says
    why; the round, and the report, go on."""
    monkeypatch.setitem(sys.modules, "h2", None)  # `import h2` fails
    reader = GaugeReader(FakeClock())
    try:
        with caplog.at_level(logging.WARNING, logger="elastin.agent.gauges"):
            got = await reader.read({"a1": [Page(1, "/metrics", ("q",), http2=True)]}, 5)
    finally:
        await reader.close()
    assert got == {}
    assert "needs the Python package h2" in caplog.text
