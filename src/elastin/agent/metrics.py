"""The agent's own ``/metrics`` endpoint (Prometheus text format, plain HTTP on loopback).

A deliberately small HTTP/1.1 server on asyncio streams: ``GET /metrics`` answers with the
text the agent renders at that moment, anything else with 404; every connection is closed
after one answer. The agent publishes where it listens as its node's ``agent.metrics``
attribute. What it exports is listed in ``docs/mesh.md`` ("Metrics").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger("elastin.agent.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    def __init__(self, render: Callable[[], str], host: str = "127.0.0.1", port: int = 0):
        self.render = render
        self.host = host
        self.want_port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.want_port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: none matter here
                parts = request.decode("latin-1").split()
                if len(parts) >= 2 and parts[0] in ("GET", "HEAD") and parts[1] == "/metrics":
                    status, ctype, body = "200 OK", CONTENT_TYPE, self.render().encode()
                else:
                    status, ctype, body = "404 Not Found", "text/plain", b"try GET /metrics\n"
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode() + (b"" if parts[:1] == ["HEAD"] else body))
                await writer.drain()
        except (TimeoutError, OSError, UnicodeError):
            pass
        except Exception:  # a bug in rendering must not end the agent
            log.exception("cannot answer /metrics")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
