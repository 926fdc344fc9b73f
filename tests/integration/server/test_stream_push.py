"""``elastin.serving``'s push (``PUSH``): an application served by the real serving stack
(uvicorn with our protocol, a real socket) writes chunks of a streamed answer without
awaiting; the push says no before the answer starts, when the client stops reading (so the
caller can wait the ASGI way), after the answer ends and once the client is gone. And the
server's mesh stream, through the real server, delivers every version once and in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from elastin import serving
from elastin.server.api import create_api
from elastin.server.auth import ensure_token
from elastin.server.cluster import Cluster
from elastin.store.memory import MemoryStore

START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"x")]}
BIG = b"x" * (256 << 10)


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[int]:
    sock = serving.bind("127.0.0.1", 0, what="the test's server")
    server = serving.Server(app, serving.Limits(), name="the test's server", log_level="warning")
    await server.startup([sock])
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await server.shutdown([sock])
        sock.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    size = int((await reader.readline()).strip(), 16)
    data = await reader.readexactly(size + 2)
    return data[:-2]


async def test_push_writes_chunks_at_once_and_says_no_when_it_cannot() -> None:
    said: dict[str, Any] = {}
    reading = asyncio.Event()
    late: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        push = serving.pusher(scope)
        assert push is not None
        said["before start"] = push(b"early\n")
        await send(START)
        said["pushed"] = [push(b"one\n"), push(b"two\n")]
        await reading.wait()  # the client has read those and stops reading now
        pushes = 0
        while push(BIG):
            pushes += 1
            assert pushes < 4096, "the push never said no to a client that does not read"
        said["pushed before no"] = pushes
        late.append(BIG)  # what the push refused goes the ASGI way, waiting for the reader
        await send({"type": "http.response.body", "body": BIG, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        said["after end"] = push(b"late\n")

    async with serve(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            async with asyncio.timeout(30):
                head = await read_head(reader)
                assert b"transfer-encoding: chunked" in head
                assert [await read_chunk(reader), await read_chunk(reader)] == [b"one\n", b"two\n"]
                reading.set()
                while "pushed before no" not in said:
                    await asyncio.sleep(0.01)
                body = b""
                while chunk := await read_chunk(reader):
                    body += chunk
        finally:
            writer.close()
    assert said["before start"] is False and said["pushed"] == [True, True]
    assert body == BIG * (said["pushed before no"] + 1)  # in order, nothing lost
    assert said["after end"] is False


async def test_push_says_no_once_the_client_is_gone() -> None:
    said: list[bool] = []
    done = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        push = serving.pusher(scope)
        assert push is not None
        await send(START)
        said.append(push(b"one\n"))
        while (await receive())["type"] != "http.disconnect":
            pass
        said.append(push(b"two\n"))
        done.set()

    async with serve(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        async with asyncio.timeout(30):
            await read_head(reader)
            assert await read_chunk(reader) == b"one\n"
            writer.close()
            await done.wait()
    assert said == [True, False]


SPEC = """
app: shop
services:
  web:
    command: ["true"]
    ports: {http: 8080}
    resources: {cpu: 100m, memory: 16Mi}
"""


async def test_the_mesh_stream_gets_every_version_once_and_in_order(tmp_path: Path) -> None:
    """Through the real server's stack: the feed pushes versions to the open stream."""
    cluster = await Cluster.open(MemoryStore(), seed=1)
    token = ensure_token(tmp_path)
    async with serve(create_api(cluster, token, tmp_path)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"GET /v1/nodes/n1/mesh/stream HTTP/1.1\r\nHost: t\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            seen: list[int] = []
            async with asyncio.timeout(30):
                assert b" 200 " in await read_head(reader)
                seen.append(json.loads(await read_chunk(reader))["version"])
                for replicas in (1, 2, 3):
                    await cluster.apps.apply(
                        SPEC.replace("8080}", f"8080}}\n    replicas: {replicas}")
                    )
                    want = cluster.changes.mesh.value
                    while seen[-1] < want:
                        seen.append(json.loads(await read_chunk(reader))["version"])
            assert seen == sorted(set(seen)) and len(seen) >= 2
            assert cluster.mesh.pending(10**9) == ["n1"]  # a live stream counts for draining
        finally:
            writer.close()
        cluster.close()
