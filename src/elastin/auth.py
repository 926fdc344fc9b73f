"""The cluster token check, shared by the server's API and each agent's API.

Every call to either API carries ``Authorization: Bearer <token>``; ``token_matches`` compares
it in constant time and ``RequireToken`` is the ASGI middleware that answers anything else
with a 401 JSON body ``{"error": "Unauthorized", "message", "hint"}`` before the application
sees the request.

It lives at the top of the package and imports nothing of ours, so that the agent checks the
token without importing the server (the layering rule of docs/architecture.md). The server
keeps making and storing the token (``elastin.server.auth``).
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send


def token_matches(expected: str, header: str | None) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <expected>`` (constant time)."""
    if not header or not expected:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), expected.encode())


class RequireToken:
    """Every HTTP call needs the bearer token; a websocket without it is closed (1008).

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` costs a task and a stream per
    request, which halved the server API's throughput for agents' blocking queries.
    ``message`` and ``hint`` make the 401 body (say where the token is to be found)."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        message: str = "this call needs the cluster's token",
        hint: str = "send 'Authorization: Bearer <token>'",
    ) -> None:
        self.app = app
        self.token = token
        self.denied = json.dumps(
            {"error": "Unauthorized", "message": message, "hint": hint}
        ).encode()

    def _allowed(self, scope: Scope) -> bool:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return token_matches(self.token, header.decode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(self.denied)).encode()),
                        (b"connection", b"close"),  # no keep-alive without the token
                    ],
                }
            )
            await send({"type": "http.response.body", "body": self.denied})
            return
        if scope["type"] == "websocket" and not self._allowed(scope):
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)
