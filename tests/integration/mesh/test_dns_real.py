"""The DNS interface on real sockets: UDP and TCP on 127.0.0.1, and dig when it is there."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess

import pytest

from elastin.mesh.dns import A, DnsServer, Target

pytestmark = pytest.mark.integration


def lookup(service: str, app: str | None, port: str | None) -> list[Target] | None:
    if service != "web":
        return None
    return [Target("127.0.0.1", 8080, "n1"), Target("127.0.0.2", 8081, "n2")]


def query(name: str, qtype: int = A) -> bytes:
    labels = b"".join(bytes([len(x)]) + x.encode() for x in name.split("."))
    return (
        struct.pack("!HHHHHH", 42, 0x0100, 1, 0, 0, 0)
        + labels
        + b"\x00"
        + struct.pack("!HH", qtype, 1)
    )


async def test_udp_and_tcp_on_one_port() -> None:
    server = DnsServer(lookup)
    await server.start()
    try:
        loop = asyncio.get_running_loop()

        def udp() -> bytes:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(query("web.service.elastin"), ("127.0.0.1", server.port))
                return s.recv(4096)

        reply = await loop.run_in_executor(None, udp)
        assert reply[:2] == b"\x00\x2a" and struct.unpack("!H", reply[6:8])[0] == 2
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        data = query("nope.service.elastin")
        writer.write(struct.pack("!H", len(data)) + data)
        await writer.drain()
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        reply = await reader.readexactly(size)
        assert reply[3] & 0xF == 3  # NXDOMAIN
        writer.close()
        dig = shutil.which("dig")
        if dig:  # not installed by default; checked when it is
            out = await asyncio.to_thread(
                subprocess.run,
                [dig, "@127.0.0.1", "-p", str(server.port), "web.service.elastin", "A", "+short"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert sorted(out.stdout.split()) == ["127.0.0.1", "127.0.0.2"]
    finally:
        await server.close()
