"""The agent's own listeners and clients when the process runs out of file descriptors: the
DNS server's TCP accept loop pauses and logs one line (no traceback per attempt), the access
log collector's failing ``socket()``/``connect()`` is retried later, and neither ends the task
group they run in. A real process with a low ``RLIMIT_NOFILE``, flooded from the test."""

from __future__ import annotations

import os
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from elastin.mesh.dns import A

SCRIPT = r"""
import asyncio, logging, sys
from pathlib import Path
from elastin.mesh.dns import DnsServer, Target
from elastin.mesh.haproxy.accesslog import AccessLogCollector
from elastin.mesh.haproxy.runtime_client import RuntimeClient

logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

def lookup(service, app, port):
    return [Target("127.0.0.1", 8080, "n1")] if service == "web" else None

async def main():
    tmp = Path(sys.argv[1])
    dns = DnsServer(lookup)
    await dns.start()
    collector = AccessLogCollector(RuntimeClient(tmp / "haproxy.sock"), tmp / "access.log",
                                   probe=0.05)
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()
    loop.add_reader(0, stdin_closed.set)
    print(dns.port, flush=True)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(collector.run())
        await stdin_closed.wait()
        task.cancel()
    await dns.close()
    print("clean exit", flush=True)

asyncio.run(main())
"""


def query(name: str) -> bytes:
    labels = b"".join(bytes([len(x)]) + x.encode() for x in name.split("."))
    q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", A, 1)
    return struct.pack("!H", len(q)) + q


def tcp_query(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(query("web.service.elastin"))
        size = struct.unpack("!H", s.recv(2))[0]
        return s.recv(size)


def test_dns_and_access_log_collector_survive_running_out_of_descriptors(
    tmp_path: Path,
) -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    log = tmp_path / "stderr"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            preexec_fn=low_limit,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, log.read_text()
        port = int(proc.stdout.readline())
        flood = []
        try:
            for _ in range(120):  # more than the process can open: the rest wait in the backlog
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            for _ in range(200):
                if "cannot accept connections" in log.read_text():
                    break
                time.sleep(0.05)
            assert "cannot accept connections" in log.read_text(), log.read_text()
            time.sleep(0.3)  # the collector tries a few times meanwhile (probe 0.05 s)
            assert proc.poll() is None, log.read_text()
        finally:
            for s in flood:
                s.close()
        answer = b""
        for _ in range(100):
            try:
                answer = tcp_query(port)
                break
            except OSError:
                time.sleep(0.05)
        assert answer[:2] == b"\x00\x07" and struct.unpack("!H", answer[6:8])[0] == 1
        proc.stdin.close()
        assert proc.stdout.read().strip() == b"clean exit", log.read_text()
        assert proc.wait(30) == 0
        text = log.read_text()
        assert "Traceback" not in text, text
        assert text.count("cannot accept connections") == 1, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
