"""The shared token check (``elastin.auth``): constant-time bearer compare and the ASGI gate
both APIs put in front of everything (no sockets: httpx's ASGI transport)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

import elastin.auth
from elastin.auth import RequireToken, token_matches
from elastin.server import auth as server_auth


def test_token_matches_only_the_bearer_token() -> None:
    assert token_matches("s3cret", "Bearer s3cret")
    assert token_matches("s3cret", "bearer s3cret ")
    assert not token_matches("s3cret", "Bearer s3cre")
    assert not token_matches("s3cret", "Basic s3cret")
    assert not token_matches("s3cret", "s3cret")
    assert not token_matches("s3cret", None)
    assert not token_matches("s3cret", "")
    assert not token_matches("", "Bearer ")  # no token configured: nothing passes


def test_the_server_re_exports_the_same_check() -> None:
    assert server_auth.token_matches is token_matches


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"in"})


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dG9rZW4="])
async def test_require_token_answers_401_json_before_the_app(header: str | None) -> None:
    app = RequireToken(_ok, token="t0ken", message="needs it", hint="look there")
    headers = {"authorization": header} if header else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        resp = await c.get("/anything", headers=headers)
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/json"
    assert json.loads(resp.content) == {
        "error": "Unauthorized",
        "message": "needs it",
        "hint": "look there",
    }


async def test_require_token_lets_the_token_through() -> None:
    app = RequireToken(_ok, token="t0ken")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as c:
        resp = await c.get("/x", headers={"authorization": "Bearer t0ken"})
    assert (resp.status_code, resp.content) == (200, b"in")


def test_the_servers_hint_names_its_token_file() -> None:
    hint = server_auth.token_hint(Path("/var/lib/elastin"))
    assert "/var/lib/elastin/token" in hint


def test_the_shared_check_imports_nothing_of_ours() -> None:
    """Both the server and the agent import it: it must not pull either in."""
    tree = ast.parse(Path(elastin.auth.__file__).read_text())
    ours = [
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("elastin")
    ] + [
        a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import)
        for a in n.names
        if a.name.startswith("elastin")
    ]
    assert ours == []


@pytest.mark.parametrize(
    ("header", "reaches_app"), [(None, False), (b"Bearer wrong", False), (b"Bearer t0ken", True)]
)
async def test_a_websocket_needs_the_token_too(header: bytes | None, reaches_app: bool) -> None:
    """The token check covered only HTTP: a WebSocket went straight to the app (issue #10)."""
    reached: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["type"])

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    headers = [(b"authorization", header)] if header else []
    scope = {"type": "websocket", "path": "/ws", "headers": headers}
    await RequireToken(app, token="t0ken")(scope, receive, send)  # type: ignore[arg-type]
    if reaches_app:
        assert reached == ["websocket"] and not sent
    else:
        assert not reached and sent == [{"type": "websocket.close", "code": 1008}]
