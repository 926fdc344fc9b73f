"""Health-check thresholds (pure) and the probes against real loopback sockets."""

from __future__ import annotations

import asyncio

from elastin.agent.health import HealthState, probe
from elastin.model.workload import HealthCheck
from elastin.testing.fake_driver import exec_here


def test_thresholds_and_grace() -> None:
    check = HealthCheck(type="tcp", healthy_threshold=2, unhealthy_threshold=2, grace=5)
    s = HealthState(check, started_at=0.0)
    assert s.record(False, 1.0, "refused") is None  # in grace
    assert s.record(True, 2.0) is None
    assert s.record(True, 3.0) is True
    assert s.record(True, 4.0) is None
    assert s.record(False, 10.0, "x") is None
    assert s.record(False, 11.0, "x") is False
    assert s.last_error == "x"
    assert s.record(True, 12.0) is None
    assert s.record(True, 13.0) is True


async def test_probes_against_real_sockets() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line:
            seen.append(line + await reader.readuntil(b"\r\n\r\n"))
        status = "200 OK" if b" /ok " in line else "500 Oops"
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ok, _ = await probe(HealthCheck(type="http", path="/ok"), "127.0.0.1", port, exec_here)
        assert ok
        ok, err = await probe(HealthCheck(type="http", path="/bad"), "127.0.0.1", port, exec_here)
        assert not ok and "500" in err
        ok, _ = await probe(HealthCheck(type="tcp"), "127.0.0.1", port, exec_here)
        assert ok
        assert seen and all(b"user-agent: elastin-health" in h.lower() for h in seen)
    finally:
        server.close()
        await server.wait_closed()
    ok, err = await probe(HealthCheck(type="tcp"), "127.0.0.1", port, exec_here)
    assert not ok and err
    ok, _ = await probe(HealthCheck(type="exec", command=("true",)), "", None, exec_here)
    assert ok
    ok, err = await probe(HealthCheck(type="exec", command=("false",)), "", None, exec_here)
    assert not ok and "1" in err
    ok, err = await probe(
        HealthCheck(type="exec", command=("sleep", "5"), timeout=0.2), "", None, exec_here
    )
    assert not ok and "0.2" in err


async def test_http_probe_semantics_against_a_real_server() -> None:
    """2xx and 3xx are healthy (a redirect is not followed), the rest is not; an answer
    that is not HTTP, a refused connection and a silent server say so."""
    answers = {
        b"/ok": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"/moved": b"HTTP/1.1 302 Found\r\nLocation: /nowhere\r\nContent-Length: 0\r\n\r\n",
        b"/missing": b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        b"/junk": b"SSH-2.0-OpenSSH\r\n\r\n",
        b"/stream": b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\npartial",
    }

    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1]
        if path == b"/silent":
            await done.wait()
        writer.write(answers.get(path, b""))
        await writer.drain()
        if path == b"/stream":
            await done.wait()  # the body never ends: the probe must not wait for it
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def check(path: str, timeout: float = 2.0) -> tuple[bool, str]:
        return await probe(
            HealthCheck(type="http", path=path, timeout=timeout), "127.0.0.1", port, exec_here
        )

    try:
        assert await check("/ok") == (True, "")
        assert await check("/moved") == (True, "")
        assert await check("/stream") == (True, "")
        assert await check("/missing") == (False, "HTTP 404 from /missing")
        assert await check("/junk") == (False, "not an HTTP response")
        assert await check("/silent", timeout=0.3) == (False, "no answer within 0.3s")
    finally:
        done.set()
        server.close()
        await server.wait_closed()
    ok, err = await check("/ok")
    _, tcp_err = await probe(HealthCheck(type="tcp"), "127.0.0.1", port, exec_here)
    assert not ok and err and err == tcp_err  # the socket's error, as a tcp check says it
    ok, err = await probe(HealthCheck(type="http"), "127.0.0.1", None, exec_here)
    assert (ok, err) == (False, "no port to check")


def test_a_starting_instance_is_probed_fast_then_at_the_usual_pace() -> None:
    """Until the first verdict the probes come after 50 ms, 100 ms, 200 ms... up to the
    usual pace (at most a second before it is healthy), so an instance is ready soon after
    it first answers; once healthy, the check's interval."""
    s = HealthState(HealthCheck(type="tcp", interval=10.0), started_at=0.0)
    assert [s.wait() for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert s.record(True, 1.5) is True
    assert s.wait() == 10.0


def test_fast_probes_of_a_slow_start_count_a_failure_once_per_usual_pace() -> None:
    """A slow starter refuses the fast probes: those failures count only once a second (as
    before the fast probes), so three of them do not make it unhealthy in 150 ms."""
    check = HealthCheck(type="tcp", interval=10.0, unhealthy_threshold=3)
    s = HealthState(check, started_at=0.0)
    counted = [t for t in (0.0, 0.05, 0.15, 0.35, 0.75, 1.0, 1.55, 2.0, 2.6) if s.counts(False, t)]
    assert counted == [0.0, 1.0, 2.0]
    assert s.counts(True, 2.7)  # a success always counts


def test_passes_while_starting_are_still_in_a_row() -> None:
    """A failure the fast probes do not count as a failure still breaks a run of passes: a
    flapping starter is not healthy after pass, fail, pass with healthy_threshold 2."""
    s = HealthState(HealthCheck(type="tcp", healthy_threshold=2, interval=10.0), started_at=0.0)
    for t, ok in ((0.0, False), (0.05, True), (0.15, False), (0.35, True)):
        verdict = s.record(ok, t) if s.counts(ok, t) else None
        assert verdict is None, (t, ok)
    assert s.record(True, 0.75) is True  # two in a row now
