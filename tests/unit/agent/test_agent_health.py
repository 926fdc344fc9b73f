"""Health-check thresholds (pure) and the probes against real loopback sockets."""

from __future__ import annotations

import asyncio

from elastin.agent.health import HealthState, probe
from elastin.model.workload import HealthCheck


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
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        status = "200 OK" if b" /ok " in line else "500 Oops"
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ok, _ = await probe(HealthCheck(type="http", path="/ok"), "127.0.0.1", port, {}, "")
        assert ok
        ok, err = await probe(HealthCheck(type="http", path="/bad"), "127.0.0.1", port, {}, "")
        assert not ok and "500" in err
        ok, _ = await probe(HealthCheck(type="tcp"), "127.0.0.1", port, {}, "")
        assert ok
    finally:
        server.close()
        await server.wait_closed()
    ok, err = await probe(HealthCheck(type="tcp"), "127.0.0.1", port, {}, "")
    assert not ok and err
    ok, _ = await probe(HealthCheck(type="exec", command=("true",)), "", None, {}, "")
    assert ok
    ok, err = await probe(HealthCheck(type="exec", command=("false",)), "", None, {}, "")
    assert not ok and "1" in err
    ok, err = await probe(
        HealthCheck(type="exec", command=("sleep", "5"), timeout=0.2), "", None, {}, ""
    )
    assert not ok and "0.2" in err
