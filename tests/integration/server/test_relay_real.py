"""The server's relay (``server/relay.py``) in front of a real agent API on 127.0.0.1: what
the agent streams passes through, its refusals come back as the server's errors before any
byte, an agent that is down is a 503 naming the node, and a caller going away ends the
agent's follow."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from elastin.agent.api import AgentApi
from elastin.model.cluster import Node
from elastin.server.errors import NotFound
from elastin.server.relay import AgentUnavailable, BadGateway, RelayResponse, open_relay

pytestmark = pytest.mark.integration

TOKEN = "cluster-t0ken"
ALLOC = "0a1b2c3d4e5f"


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentApi]:
    logs = tmp_path / "allocs" / ALLOC / "logs"
    logs.mkdir(parents=True)
    (logs / "stdout.log").write_bytes(b"a\nb\nc\n")
    api = AgentApi(tmp_path / "allocs", tmp_path / "mesh" / "haproxy.log", TOKEN)
    await api.start()
    try:
        yield api
    finally:
        await api.close()


def node_of(api: AgentApi | str) -> Node:
    address = api if isinstance(api, str) else api.address
    return Node(id="n0de1", name="worker-3", attributes=(("agent.api", address),))


async def read_until(relay: AsyncIterator[bytes], want: bytes) -> bytes:
    got = b""
    async with asyncio.timeout(10):
        while want not in got:
            got += await anext(relay)
    return got


async def settle(check: Callable[[], bool], tries: int = 300) -> None:
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never settled")


async def test_the_stream_passes_through(agent: AgentApi) -> None:
    relay = await open_relay(node_of(agent), f"/v1/allocations/{ALLOC}/logs", {"tail": 2}, TOKEN)
    assert b"".join([c async for c in relay]) == b"b\nc\n"


async def test_a_follow_passes_through_and_closing_the_relay_ends_it(agent: AgentApi) -> None:
    path = agent.alloc_root / ALLOC / "logs" / "stdout.log"
    relay = await open_relay(
        node_of(agent), f"/v1/allocations/{ALLOC}/logs", {"tail": 1, "follow": True}, TOKEN
    )
    try:
        assert await read_until(relay, b"c\n") == b"c\n"
        with open(path, "ab") as w:
            w.write(b"d\n")
        assert await read_until(relay, b"d\n") == b"d\n"
        assert agent.follows == 1
    finally:
        await relay.aclose()
    await settle(lambda: agent.follows == 0)


async def test_the_agents_404_comes_back_with_its_hint(agent: AgentApi) -> None:
    with pytest.raises(NotFound) as e:
        await open_relay(node_of(agent), "/v1/allocations/ffff0000/logs", {}, TOKEN)
    assert "ffff0000" in e.value.message and "node" in e.value.hint


async def test_a_token_the_agent_refuses_is_502(agent: AgentApi) -> None:
    with pytest.raises(BadGateway) as e:
        await open_relay(node_of(agent), "/v1/mesh/logs", {}, "another-token")
    assert "worker-3" in e.value.message and "token" in e.value.message


async def test_an_agent_that_is_down_is_503_naming_the_node() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AgentUnavailable) as e:
        await open_relay(node_of(f"127.0.0.1:{port}"), "/v1/mesh/logs", {}, TOKEN)
    assert e.value.status == 503
    assert "worker-3" in e.value.message and f"127.0.0.1:{port}" in e.value.message


async def test_a_caller_going_away_ends_the_agents_follow(agent: AgentApi) -> None:
    """A server route answering with RelayResponse, served for real: the caller hangs up
    mid-follow, the relay closes, the agent lets the follow go."""
    node = node_of(agent)

    async def route(_: Request) -> RelayResponse:
        relay = await open_relay(
            node, f"/v1/allocations/{ALLOC}/logs", {"tail": 3, "follow": True}, TOKEN
        )
        return RelayResponse(relay)

    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/logs", route)]),
            lifespan="off",
            log_level="warning",
            loop="asyncio",
        )
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await settle(lambda: server.started)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/logs"
        async with httpx.AsyncClient() as c, c.stream("GET", url) as resp:
            assert resp.status_code == 200
            chunks = resp.aiter_raw()
            assert await read_until(chunks, b"c\n") == b"a\nb\nc\n"
            assert agent.follows == 1
        await settle(lambda: agent.follows == 0)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        sock.close()
