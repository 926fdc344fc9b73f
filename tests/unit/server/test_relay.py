"""The server's relay to a node's agent API (``server/relay.py``) on httpx's MockTransport
(no sockets): the published address is checked before any request, and the agent's answers
become the right errors before anything is streamed."""

from __future__ import annotations

import json

import httpx
import pytest

from elastin.model.cluster import Node
from elastin.server.errors import Invalid, NotFound, ServerError
from elastin.server.relay import (
    AgentUnavailable,
    BadGateway,
    agent_address,
    open_relay,
)

TOKEN = "cluster-t0ken"


def node(api: str | None) -> Node:
    attrs = (("agent.api", api),) if api is not None else ()
    return Node(id="n1d3", name="worker-7", attributes=attrs)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:4851", ("127.0.0.1", 4851)),
        ("10.0.0.5:1", ("10.0.0.5", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("[fd00::5]:80", ("fd00::5", 80)),
    ],
)
def test_good_addresses(value: str, expected: tuple[str, int]) -> None:
    assert agent_address(node(value)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "localhost:4851",  # a name: not resolved, not trusted
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:+80",
        "127.0.0.1:80/x",
        "127.0.0.1:80#",
        "127.0.0.01:80",
        "::1:80",  # IPv6 without brackets
        "[127.0.0.1]:80",
        "0.0.0.0:80",
        "224.0.0.1:80",
        "169.254.169.254:80",  # link-local: cloud metadata
        "user@127.0.0.1:80",
        "http://127.0.0.1:80",
        "127.0.0.1:80\r\nX: y",
        "evil.example:80",
    ],
)
def test_bad_addresses_are_refused_naming_the_node(value: str) -> None:
    with pytest.raises(BadGateway) as e:
        agent_address(node(value))
    assert e.value.status == 502
    assert "worker-7" in e.value.message and "n1d3" in e.value.message


def test_no_published_address_is_503_naming_the_node() -> None:
    with pytest.raises(AgentUnavailable) as e:
        agent_address(node(None))
    assert e.value.status == 503 and "worker-7" in e.value.message


def recording() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="never\n")

    return httpx.MockTransport(answer), seen


@pytest.mark.parametrize("value", [None, "evil.example:80", "169.254.169.254:80"])
async def test_a_bad_address_makes_no_request(value: str | None) -> None:
    transport, seen = recording()
    with pytest.raises(ServerError):
        await open_relay(node(value), "/v1/mesh/logs", {}, TOKEN, transport=transport)
    assert seen == []


@pytest.mark.parametrize(
    "path", ["/v1/../token", "/v1/allocations/../x", "v1/x", "/v1/a?b", "/v2/x"]
)
async def test_only_agent_api_paths_are_relayed(path: str) -> None:
    transport, seen = recording()
    with pytest.raises(ValueError):
        await open_relay(node("127.0.0.1:1"), path, {}, TOKEN, transport=transport)
    assert seen == []


async def test_the_stream_passes_through_with_the_token_and_params() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"line 1\nline 2\n")

    relay = await open_relay(
        node("127.0.0.1:4851"),
        "/v1/allocations/ab12cd34/logs",
        {"stream": "stderr", "tail": 5, "follow": False},
        TOKEN,
        transport=httpx.MockTransport(answer),
    )
    assert b"".join([c async for c in relay]) == b"line 1\nline 2\n"
    (req,) = seen
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert str(req.url) == (
        "http://127.0.0.1:4851/v1/allocations/ab12cd34/logs?stream=stderr&tail=5&follow=false"
    )


def answering(status: int, body: object) -> httpx.MockTransport:
    content = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return httpx.MockTransport(lambda _: httpx.Response(status, content=content))


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (404, {"error": "NotFound", "message": "no logs for ab12", "hint": "h"}, NotFound, 404),
        (422, {"error": "Invalid", "message": "tail must be"}, Invalid, 422),
        (401, {"error": "Unauthorized", "message": "x"}, BadGateway, 502),
        (503, {"error": "Unavailable", "message": "too many"}, AgentUnavailable, 503),
        (500, b"Internal Server Error", BadGateway, 502),
        (404, b"<html>not json</html>", BadGateway, 502),
    ],
)
async def test_agent_answers_become_errors_before_streaming(
    status: int, body: object, error: type[ServerError], code: int
) -> None:
    with pytest.raises(error) as e:
        await open_relay(
            node("127.0.0.1:4851"), "/v1/mesh/logs", {}, TOKEN, transport=answering(status, body)
        )
    assert type(e.value) is error and e.value.status == code
    if status == 404 and isinstance(body, dict):
        assert (e.value.message, e.value.hint) == ("no logs for ab12 (node worker-7)", "h")
    else:
        assert "worker-7" in e.value.message or e.value.status == 422


async def test_an_unreachable_agent_is_503_naming_the_node() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(AgentUnavailable) as e:
        await open_relay(
            node("127.0.0.1:4851"),
            "/v1/mesh/logs",
            {},
            TOKEN,
            transport=httpx.MockTransport(refuse),
        )
    assert e.value.status == 503
    assert "worker-7" in e.value.message and "127.0.0.1:4851" in e.value.message
    assert "connection refused" in e.value.message


async def test_an_agents_message_is_bounded_and_printable() -> None:
    body = {"message": "x\x1b[31m" + "y" * 5000, "hint": "\n"}
    with pytest.raises(NotFound) as e:
        await open_relay(
            node("127.0.0.1:4851"), "/v1/mesh/logs", {}, TOKEN, transport=answering(404, body)
        )
    assert len(e.value.message) <= 500 + len(" (node worker-7)")
    assert "\x1b" not in e.value.message
    assert e.value.hint.strip() == ""
