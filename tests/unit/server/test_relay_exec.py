"""The relay posts an exec's JSON body to the agent and passes its 409 ("not running") on as
a Conflict naming the node (``server/relay.py``, on httpx's MockTransport)."""

from __future__ import annotations

import json

import httpx
import pytest

from elastin.model.cluster import Node
from elastin.server.errors import Conflict
from elastin.server.relay import open_relay

TOKEN = "cluster-t0ken"
NODE = Node(id="n1d3", name="worker-7", attributes=(("agent.api", "127.0.0.1:4851"),))


async def test_a_body_is_posted_and_the_answer_streamed() -> None:
    seen: list[httpx.Request] = []

    def agent(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b'{"exit_code": 0}\n')

    relay = await open_relay(
        NODE,
        "/v1/allocations/ab12/exec",
        {},
        TOKEN,
        body={"command": ["ls", "-l"], "timeout": 5.0},
        transport=httpx.MockTransport(agent),
    )
    assert b"".join([c async for c in relay]) == b'{"exit_code": 0}\n'
    (req,) = seen
    assert req.method == "POST" and json.loads(req.content) == {
        "command": ["ls", "-l"],
        "timeout": 5.0,
    }
    assert req.headers["authorization"] == f"Bearer {TOKEN}"


async def test_not_running_is_a_conflict_naming_the_node() -> None:
    body = {"error": "Conflict", "message": "shop.api[0] is not running now", "hint": "see ps"}
    transport = httpx.MockTransport(lambda _: httpx.Response(409, json=body))
    with pytest.raises(Conflict) as e:
        await open_relay(NODE, "/v1/allocations/ab12/exec", {}, TOKEN, body={}, transport=transport)
    assert e.value.message == "shop.api[0] is not running now (node worker-7)"
    assert e.value.hint == "see ps"
