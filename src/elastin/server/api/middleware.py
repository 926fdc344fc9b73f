"""The agents' mesh snapshot streams, served on plain ASGI in front of the FastAPI app
(the token check, ``elastin.auth.RequireToken``, sits in front of it).

Plain ASGI on purpose: a ``StreamingResponse`` per mesh stream (a task group, several
wrappers per message) was three quarters of the server's time with 1,000 agents
(bench/propagation.py).
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from elastin.server.meshfeed import MeshFeed
from elastin.serving import pusher

STREAM_PATH = re.compile(r"^/v1/nodes/([^/]+)/mesh/stream$")


class MeshStreams:
    """``GET /v1/nodes/{id}/mesh/stream``: the node's snapshots as they change (NDJSON).
    It sits inside ``RequireToken``; anything else goes on to the app."""

    def __init__(self, app: ASGIApp, feed: MeshFeed) -> None:
        self.app = app
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = (
            STREAM_PATH.match(scope["path"])
            if scope["type"] == "http" and scope["method"] == "GET"
            else None
        )
        if found is None:
            await self.app(scope, receive, send)
            return
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/x-ndjson")],
        }
        await send(start)

        async def disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        # the feed writes newer versions with the server's push (no wake-up of this task)
        stream = self.feed.stream(unquote(found[1]), push=pusher(scope))
        try:
            async with asyncio.TaskGroup() as tg:
                gone = tg.create_task(disconnect())
                async for chunk in stream:  # a bare newline at least every 15 s: gone is seen
                    if gone.done():
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                gone.cancel()
        finally:
            await stream.aclose()
