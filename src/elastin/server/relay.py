"""Relaying a node's agent API to the server's callers: the server never reads a node's disk.

An instance's logs and a node's mesh access log live on that node; its agent serves them
(``agent/api.py``) and publishes where as its node's ``agent.api`` attribute. The server's
routes open a relay to it and stream what it sends, as Nomad's servers relay its clients'
file-system API::

    relay = await open_relay(node, f"/v1/allocations/{alloc.id}/logs", params, token)
    return RelayResponse(relay)

``open_relay`` raises before anything is streamed, so that the route answers with the right
status: the agent's own 404 (with its message and hint) or 422, a 503 naming the node when
its agent cannot be reached, a 502 when the node published a bad address or its agent
answered badly. ``agent.api`` comes from a node's registration: it is checked where it
enters here (an IP literal and a port, nothing else) and a bad value is refused without a
request. Closing the relay (``aclose``; ``RelayResponse`` does it when the caller goes away)
closes the upstream request, which ends the agent's follow.

Errors (``elastin.server.errors``' root, turned into JSON by the API)::

    ServerError
     ├── NotFound            404: the agent has no such logs (its message, the node's
     │                        name, its hint)
     ├── Invalid             422: the agent refused a parameter
     ├── Conflict            409: the agent cannot do it now (an instance not running)
     ├── AgentUnavailable    503: no agent API published, or it cannot be reached
     └── BadGateway          502: a bad published address, or the agent answered badly
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from elastin.model.cluster import Node
from elastin.server.errors import Conflict, Invalid, NotFound, ServerError

log = logging.getLogger("elastin.server.relay")

AGENT_API_ATTR = "agent.api"
CONNECT_TIMEOUT = 5.0  # seconds to connect to an agent
HEAD_TIMEOUT = 10.0  # seconds for its answer's status and headers (the body may take days)
ERROR_BODY_LIMIT = 16 * 1024  # bytes of an agent's error answer read
TEXT_LIMIT = 500  # characters of an agent's message or hint passed on
PATH = re.compile(r"/v1(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)+")
PARAM_NAME = re.compile(r"[a-z_]{1,32}")


class AgentUnavailable(ServerError):
    status = 503


class BadGateway(ServerError):
    status = 502


def _who(node: Node) -> str:
    return f"node {node.name} ({node.id})"


def agent_address(node: Node) -> tuple[str, int]:
    """The ``(ip, port)`` of the node's agent API, from its ``agent.api`` attribute, checked:
    an IP literal (``[...]`` for IPv6) and a port from 1 to 65535, nothing else; not an
    unspecified, multicast or link-local address."""
    value = dict(node.attributes).get(AGENT_API_ATTR, "")
    if not value:
        raise AgentUnavailable(
            f"{_who(node)} does not serve logs: its agent publishes no '{AGENT_API_ATTR}'",
            hint="its agent is older than this server or did not start its API; restart the agent",
        )
    shown = value[:80]
    bad = BadGateway(
        f"{_who(node)} published a bad '{AGENT_API_ATTR}' address {shown!r}",
        hint="it must be an IP address and a port, like 10.0.0.5:4851 or [fd00::5]:4851; "
        "check how the node's agent was started",
    )
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or len(port) > 5:
        raise bad
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise bad from None
    if (
        str(ip) != host
        or bracketed != (ip.version == 6)
        or not 1 <= int(port) <= 65535
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_link_local
    ):
        raise bad
    return str(ip), int(port)


def _params(params: Mapping[str, str | int | bool]) -> dict[str, str]:
    out = {}
    for k, v in params.items():
        if not PARAM_NAME.fullmatch(k):
            raise ValueError(f"not a parameter name: {k!r}")
        out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
    return out


def _clean(text: Any) -> str:
    """An agent's message, as text fit to pass on: printable, bounded."""
    s = text if isinstance(text, str) else ""
    return "".join(c if c.isprintable() else " " for c in s[:TEXT_LIMIT])


class Relay:
    """An agent's streaming answer: iterate it for the bytes; ``aclose()`` ends it (and the
    upstream request). It ends by itself when the agent's stream ends or breaks."""

    def __init__(self, node: Node, client: httpx.AsyncClient, response: httpx.Response) -> None:
        self.node = node
        self._client = client
        self._response = response
        self._chunks = response.aiter_bytes()  # decoded: no content-encoding is relayed
        self._closed = False

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            await self.aclose()
            raise
        except httpx.HTTPError as e:  # the status is sent: all there is to do is to end
            log.warning("the relay from %s broke: %s", _who(self.node), e)
            await self.aclose()
            raise StopAsyncIteration from None
        except BaseException:  # cancelled: the caller went away
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._response.aclose()
        finally:
            await self._client.aclose()


class RelayResponse(StreamingResponse):
    """Streams a ``Relay`` and closes it however the response ends (the caller going away
    included), so that no upstream request outlives its caller."""

    def __init__(self, relay: Relay, media_type: str = "text/plain") -> None:
        super().__init__(
            relay,
            media_type=media_type,
            headers={"cache-control": "no-store", "x-content-type-options": "nosniff"},
        )
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.relay.aclose()


async def open_relay(
    node: Node,
    path: str,
    params: Mapping[str, str | int | bool],
    token: str,
    *,
    body: Mapping[str, Any] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Relay:
    """GET ``path`` (with ``params``) from the node's agent with the cluster ``token`` — or,
    with a JSON ``body``, POST it — and return its stream once the agent answered 200;
    otherwise raise (see the module's docstring) without having yielded anything.
    ``transport`` is for tests."""
    if not PATH.fullmatch(path) or "/../" in f"{path}/" or "/./" in f"{path}/":
        raise ValueError(f"not an agent API path: {path!r}")
    if not token or any(c in token for c in "\r\n"):
        raise ValueError("the relay needs the cluster token")
    query = _params(params)
    ip, port = agent_address(node)  # before anything is opened
    where = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    client = httpx.AsyncClient(
        base_url=f"http://{where}",
        headers={"authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(CONNECT_TIMEOUT, read=None),
        trust_env=False,  # no proxy from the environment sees the token
        follow_redirects=False,
        transport=transport,
    )
    response: httpx.Response | None = None
    try:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                method = "GET" if body is None else "POST"
                request = client.build_request(method, path, params=query, json=body)
                response = await client.send(request, stream=True)
        except (httpx.TransportError, TimeoutError) as e:
            raise AgentUnavailable(
                f"cannot reach the agent of {_who(node)} at {where}: {str(e) or type(e).__name__}",
                hint="is the node up? see `elastin nodes`",
            ) from None
        if response.status_code == 200:
            return Relay(node, client, response)
        raise await _refusal(node, response)
    except BaseException:
        if response is not None:
            await response.aclose()
        await client.aclose()
        raise


async def _refusal(node: Node, response: httpx.Response) -> ServerError:
    """The error to answer for an agent's non-200 answer."""
    body = b""
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= ERROR_BODY_LIMIT:
                break
        data = json.loads(body[:ERROR_BODY_LIMIT])
    except (httpx.HTTPError, ValueError):
        data = None
    data = data if isinstance(data, dict) else {}
    message, hint = _clean(data.get("message")), _clean(data.get("hint"))
    status = response.status_code
    if status == 404 and message:
        return NotFound(f"{message} (node {node.name})", hint=hint)
    if status in (400, 422) and message:
        return Invalid(message, hint=hint)
    if status == 409 and message:
        return Conflict(f"{message} (node {node.name})", hint=hint)
    if status in (401, 403):
        return BadGateway(
            f"the agent of {_who(node)} refused the server's token",
            hint="the agent joined with another token: restart it with this server's token",
        )
    if status == 503 and message:
        return AgentUnavailable(f"the agent of {_who(node)}: {message}", hint=hint)
    return BadGateway(
        f"the agent of {_who(node)} answered {status}" + (f": {message}" if message else ""),
        hint="see the agent's log on that node",
    )
