"""The agent's own API (``agent/api.py``) served for real on 127.0.0.1: the token is
required, nothing in a request can reach a path outside the logs, tails read little, and
follows get appended lines, across a copy-truncate rotation, until the client goes."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from elastin.agent import logfiles
from elastin.agent.api import AgentApi
from elastin.agent.drivers.task import rotate

pytestmark = pytest.mark.integration

TOKEN = "cluster-t0ken"
SECRET = b"do-not-leak-this-secret"
ALLOC = "ab12cd34ef56"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[AgentApi]:
    (tmp_path / "token").write_bytes(SECRET)
    logs = tmp_path / "allocs" / ALLOC / "logs"
    logs.mkdir(parents=True)
    (logs / "stdout.log").write_bytes(b"".join(f"out {i}\n".encode() for i in range(500)))
    (logs / "stderr.log").write_bytes(b"err 0\nerr 1\n")
    (tmp_path / "mesh").mkdir()
    a = AgentApi(tmp_path / "allocs", tmp_path / "mesh" / "haproxy.log", TOKEN)
    await a.start()
    try:
        yield a
    finally:
        await a.close()


def client(api: AgentApi, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=f"http://{api.address}", headers=headers, timeout=10)


async def raw_get(api: AgentApi, target: str) -> tuple[int, bytes]:
    """A request sent byte for byte (no client-side normalisation of the path)."""
    host, port = api.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


async def test_address_is_loopback_and_a_free_port(api: AgentApi) -> None:
    host, port = api.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x"])
async def test_every_route_needs_the_token(api: AgentApi, token: str | None) -> None:
    async with client(api, token) as c:
        for path in (f"/v1/allocations/{ALLOC}/logs", "/v1/mesh/logs", "/nothing"):
            resp = await c.get(path)
            assert resp.status_code == 401
            body = resp.json()
            assert body["error"] == "Unauthorized" and "Bearer" in body["hint"]


async def test_the_tail_of_an_instance_log(api: AgentApi) -> None:
    async with client(api) as c:
        resp = await c.get(f"/v1/allocations/{ALLOC}/logs", params={"tail": 3})
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        assert resp.content == b"out 497\nout 498\nout 499\n"
        resp = await c.get(f"/v1/allocations/{ALLOC}/logs", params={"stream": "stderr"})
        assert resp.content == b"err 0\nerr 1\n"
        resp = await c.get(f"/v1/allocations/{ALLOC}/logs", params={"tail": 0})
        assert resp.content.count(b"\n") == 500  # 0: the whole file


async def test_the_tail_of_a_large_file_reads_little(
    api: AgentApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = api.alloc_root / ALLOC / "logs" / "stdout.log"
    with open(big, "wb") as f:
        line = b"x" * 99 + b"\n"
        for _ in range(200):  # 20 MB
            f.write(line * 1000)
    read: list[int] = []
    real = os.pread

    def counting(fd: int, n: int, off: int) -> bytes:
        read.append(n)
        return real(fd, n, off)

    monkeypatch.setattr(os, "pread", counting)
    async with client(api) as c:
        resp = await c.get(f"/v1/allocations/{ALLOC}/logs", params={"tail": 10})
    assert resp.content == line * 10
    assert sum(read) < 4 * logfiles.BLOCK  # the scan, then the 1,000 bytes sent


@pytest.mark.parametrize(
    "target",
    [
        "/v1/allocations/..%2f..%2ftoken/logs",
        "/v1/allocations/../../token/logs",
        "/v1/allocations/%2e%2e/logs?stream=..%2f..%2f..%2ftoken",
        f"/v1/allocations/{ALLOC}/logs?stream=..%2f..%2f..%2ftoken",
        f"/v1/allocations/{ALLOC}/logs?stream=../../../token",
        "/v1/allocations/%2e%2e%2f%2e%2e%2ftoken/logs",
        "/v1/allocations/AB12CD34/logs",
        "/v1/allocations/" + "a" * 33 + "/logs",
        "/v1/mesh/logs/../../token",
    ],
)
async def test_traversal_is_impossible(api: AgentApi, target: str) -> None:
    status, body = await raw_get(api, target)
    assert status in (404, 422), (status, body)
    assert SECRET not in body
    assert json.loads(body)["error"] in ("Invalid", "NotFound")


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"tail": "-1"}, "tail"),
        ({"tail": "100001"}, "tail"),
        ({"tail": "1e3"}, "tail"),
        ({"follow": "maybe"}, "follow"),
        ({"stream": "stdin"}, "stream"),
    ],
)
async def test_bad_parameters_are_422(api: AgentApi, params: dict[str, str], word: str) -> None:
    async with client(api) as c:
        resp = await c.get(f"/v1/allocations/{ALLOC}/logs", params=params)
    assert resp.status_code == 422
    assert word in resp.json()["message"]


async def test_an_instance_without_logs_here_is_404_with_a_hint(api: AgentApi) -> None:
    async with client(api) as c:
        resp = await c.get("/v1/allocations/00000000/logs")
        assert resp.status_code == 404
        assert resp.json()["error"] == "NotFound" and "node" in resp.json()["hint"]
        resp = await c.get("/v1/mesh/logs")  # no HAProxy here yet
        assert resp.status_code == 404 and "HAProxy" in resp.json()["hint"]


async def read_until(chunks: AsyncIterator[bytes], want: bytes) -> bytes:
    got = b""
    async with asyncio.timeout(10):
        while want not in got:
            got += await anext(chunks)
    return got


async def test_follow_gets_appended_lines_and_lines_after_a_rotation(api: AgentApi) -> None:
    path = api.alloc_root / ALLOC / "logs" / "stdout.log"
    path.write_bytes(b"before\n")
    async with (
        client(api) as c,
        c.stream(
            "GET", f"/v1/allocations/{ALLOC}/logs", params={"tail": 5, "follow": "true"}
        ) as resp,
    ):
        assert resp.status_code == 200
        chunks = resp.aiter_raw()
        assert await read_until(chunks, b"before\n") == b"before\n"
        assert api.follows == 1
        with open(path, "ab") as w:
            w.write(b"appended\n")
            w.flush()
            assert await read_until(chunks, b"appended\n") == b"appended\n"
            assert rotate(path, max_bytes=1, keep=1)
            w.write(b"after rotation\n")
            w.flush()
            assert await read_until(chunks, b"after rotation\n") == b"after rotation\n"
    for _ in range(200):  # the client went away: the agent lets go of the follow
        if api.follows == 0:
            break
        await asyncio.sleep(0.01)
    assert api.follows == 0


async def test_follow_the_mesh_log_and_close_ends_it(api: AgentApi) -> None:
    api.mesh_log.write_bytes(b'{"status":200}\n')
    async with (
        client(api) as c,
        c.stream("GET", "/v1/mesh/logs", params={"tail": 10, "follow": "1"}) as resp,
    ):
        chunks = resp.aiter_raw()
        assert await read_until(chunks, b"200") == b'{"status":200}\n'
        await api.close()  # ends the follow: the stream finishes
        async with asyncio.timeout(10):
            rest = b"".join([c async for c in chunks])
    assert rest == b""
    assert api.follows == 0


async def test_followers_are_bounded(tmp_path: Path) -> None:
    logs = tmp_path / "allocs" / ALLOC / "logs"
    logs.mkdir(parents=True)
    (logs / "stdout.log").write_bytes(b"x\n")
    a = AgentApi(tmp_path / "allocs", tmp_path / "haproxy.log", TOKEN, max_follows=1)
    await a.start()
    try:
        async with (
            client(a) as c,
            c.stream("GET", f"/v1/allocations/{ALLOC}/logs", params={"follow": "true"}) as first,
        ):
            chunks = first.aiter_raw()  # kept: a dropped iterator would end the stream
            assert await read_until(chunks, b"x\n") == b"x\n"
            async with client(a) as other:
                second = await other.get(f"/v1/allocations/{ALLOC}/logs", params={"follow": "true"})
            assert second.status_code == 503
            assert "follow" in second.json()["hint"]
            assert a.follows == 1
    finally:
        await a.close()
