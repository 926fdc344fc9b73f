"""The agent's wake listener (scale to zero; docs/autoscaling.md): where this node's HAProxy
tells that it holds requests for a service scaled to zero.

``POST /v1/mesh/wake/<key>?backend=c_<app>.<service>.<port>&held=N`` on 127.0.0.1 only,
which the Lua action of ``elastin.mesh.haproxy.render`` (``_wake``) calls. It takes no token
(the proxy's configuration would have to hold it); the ``key``, random per agent run and
written only into the proxy's configuration (in the 0700 data directory), is what keeps
other local processes out. It answers 202 at once; the agent's mesh manager, which serves
it while it runs, passes the wake on to the server (``MeshManager.wake``). It is apart from
the agent's API (``agent/api.py``: the node's address, the cluster token), which reaches the
drivers, and the mesh manager may not import them.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from elastin import serving

WAKE_PATH = "/v1/mesh/wake/"
BACKEND = re.compile(r"c_([A-Za-z0-9._-]{1,120})")
MAX_HELD = 1_000_000


class Invalid(ValueError):
    """A malformed wake (answered 422)."""


def parse_wake(params: Mapping[str, str]) -> tuple[str, int]:
    """A wake's query (``backend=c_<cluster>&held=N``) → (cluster, held); ``Invalid`` naming
    what is wrong."""
    m = BACKEND.fullmatch(params.get("backend", ""))
    if m is None:
        raise Invalid("backend must be c_<app>.<service>.<port>, the proxy's backend")
    try:
        held = int(params.get("held", "1"))
    except ValueError:
        raise Invalid("held must be a whole number") from None
    if not 1 <= held <= MAX_HELD:
        raise Invalid(f"held must be in 1..{MAX_HELD}, not {held}")
    return m.group(1), held


class WakeListener:
    """Where this node's proxy tells that it holds requests for a service scaled to zero
    (see the module's doc): 127.0.0.1 only, a random ``key`` in the path, no token.
    ``on_wake(cluster, held)`` (not blocking) says whether the cluster is one this node's
    proxy may hold requests for; 404 otherwise. ``url`` is what the proxy's configuration
    calls (``Paths.wake_url``)."""

    HOST = "127.0.0.1"

    def __init__(
        self, on_wake: Callable[[str, int], bool], limits: serving.Limits | None = None
    ) -> None:
        self.on_wake = on_wake
        self.key = secrets.token_hex(16)
        self.limits = limits if limits is not None else serving.Limits.from_env()
        self._listening: serving.Listening | None = None
        self.app = Starlette(
            routes=[Route(WAKE_PATH + "{key}", self._wake, methods=["POST"])],
            exception_handlers={HTTPException: self._http_error},
        )

    @property
    def url(self) -> str:
        assert self._listening is not None, "start() first"
        return f"http://{self.HOST}:{self._listening.port}{WAKE_PATH}{self.key}"

    async def start(self) -> None:
        self._listening = await serving.listen(
            self.app,
            self.limits,
            self.HOST,
            0,
            name="the agent's wake listener",
            timeout_graceful_shutdown=1,
        )

    async def close(self) -> None:
        if self._listening is not None:
            await self._listening.stop()

    async def _http_error(self, _: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return serving.http_error(exc)

    async def _wake(self, request: Request) -> Response:
        if not secrets.compare_digest(request.path_params["key"], self.key):
            return serving.json_error(404, "NotFound", "no such wake on this agent")
        try:
            cluster, held = parse_wake(request.query_params)
        except Invalid as e:
            return serving.json_error(422, "Invalid", str(e))
        if not self.on_wake(cluster, held):
            return serving.json_error(
                404, "NotFound", f"{cluster} does not scale to zero on this node's proxy"
            )
        return Response(status_code=202)
