"""The agent's own HTTP API: this node's instances' logs and its mesh access log, streamed.

The server does not read a node's disk: it relays these routes (``server/relay.py``), as
Nomad's servers relay its clients' file-system API. The agent publishes where it listens
as its node's ``agent.api`` attribute (``host:port``).

Routes; every one needs the cluster token (``Authorization: Bearer <token>``, checked by
``elastin.auth.RequireToken``; a 401 JSON body otherwise)::

    GET /v1/allocations/{alloc_id}/logs?stream=stdout|stderr&tail=N&follow=bool
    GET /v1/mesh/logs?tail=N&follow=bool

Both answer ``text/plain``, streamed: the last ``tail`` lines (default 100; 0: the whole
file), then with ``follow`` what is appended, as it is written (``agent/logfiles.py``: inotify,
no polling; through copy-truncate rotations). Errors are JSON ``{"error", "message", "hint"}``:
422 for a bad parameter, 404 when this node has no such logs, 503 when it cannot follow
(too many followers, no inotify).

Nothing from the request reaches a path unchecked: ``alloc_id`` must be 1-32 lowercase hex
digits (what the server makes), ``stream`` one of two names; the files are
``<alloc_root>/<alloc_id>/logs/<stream>.log`` and the one mesh log the agent was given.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from elastin import serving
from elastin.agent.logfiles import FollowUnavailable, Watch, read_log
from elastin.auth import RequireToken

log = logging.getLogger("elastin.agent.api")

ALLOC_ID = re.compile(r"[0-9a-f]{1,32}")
STREAMS = ("stdout", "stderr")
DEFAULT_TAIL = 100
MAX_TAIL = 100_000
MAX_FOLLOWS = 64  # followers at once (each holds an inotify instance and a file)
TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


class Refused(Exception):
    """A request this API answers with a JSON error (``status``, ``message``, ``hint``)."""

    def __init__(self, status: int, error: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.hint = hint

    def response(self) -> JSONResponse:
        body = {"error": self.error, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        return JSONResponse(body, status_code=self.status)


def invalid(message: str, hint: str = "") -> Refused:
    return Refused(422, "Invalid", message, hint)


# --------------------------------------------------------------------------- pure: parameters


def parse_alloc_id(value: str) -> str:
    if not ALLOC_ID.fullmatch(value):
        raise invalid(
            f"not an allocation id: {value[:80]!r}",
            "an allocation id is 1 to 32 lowercase hex digits; see `elastin ps`",
        )
    return value


def parse_stream(params: Mapping[str, str]) -> str:
    value = params.get("stream", "stdout")
    if value not in STREAMS:
        raise invalid(f"stream must be stdout or stderr, not {value[:40]!r}")
    return value


def parse_tail(params: Mapping[str, str]) -> int | None:
    """Lines to show first: ``None`` for the whole file (``tail=0``)."""
    value = params.get("tail", str(DEFAULT_TAIL))
    if not (value.isascii() and value.isdigit() and len(value) <= 6) or int(value) > MAX_TAIL:
        raise invalid(f"tail must be a whole number from 0 to {MAX_TAIL}, not {value[:40]!r}")
    n = int(value)
    return None if n == 0 else n


def parse_follow(params: Mapping[str, str]) -> bool:
    value = params.get("follow", "false").lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise invalid(f"follow must be true or false, not {value[:40]!r}")


# --------------------------------------------------------------------------- I/O


class _ClosingStream(StreamingResponse):
    """A streaming response that always closes its iterator and releases what it holds,
    even when the client went away before the first byte."""

    def __init__(
        self, content: AsyncIterator[bytes], release: Callable[[], None], **kw: Any
    ) -> None:
        super().__init__(content, **kw)
        self._content = content
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                await aclose()
            self._release()


class AgentApi:
    """The agent's HTTP API on ``host:port`` (``port`` 0: any free port).

    ``start()`` listens (``address`` is then ``"host:port"``), ``close()`` ends every follow
    and stops serving."""

    def __init__(
        self,
        alloc_root: Path,
        mesh_log: Path,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_follows: int = MAX_FOLLOWS,
        limits: serving.Limits | None = None,
    ) -> None:
        if not token:
            raise ValueError("the agent's API needs the cluster token")
        self.alloc_root = alloc_root
        self.mesh_log = mesh_log
        self.host = host
        self.want_port = port
        self.max_follows = max_follows
        # timeouts, connection caps, body size (elastin.serving); ELASTIN_API_* by default
        self.limits = limits if limits is not None else serving.Limits.from_env()
        self._watches: set[Watch] = set()
        self._sock: socket.socket | None = None
        self._server: serving.Server | None = None
        app = Starlette(
            routes=[
                Route("/v1/allocations/{alloc_id}/logs", self._alloc_logs, methods=["GET"]),
                Route("/v1/mesh/logs", self._mesh_logs, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_error},
        )
        self.app = RequireToken(
            app,
            token=token,
            message="this call needs the cluster's token",
            hint="send 'Authorization: Bearer <token>' (the token this node's agent joined with)",
        )

    @property
    def port(self) -> int:
        assert self._sock is not None, "start() first"
        return int(self._sock.getsockname()[1])

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def follows(self) -> int:
        """Follows in progress."""
        return len(self._watches)

    async def start(self) -> None:
        sock = serving.bind(self.host, self.want_port, what="the agent's API", backlog=128)
        server = serving.Server(
            self.app,
            self.limits,
            name="the agent's API",
            log_level="warning",
            log_config=None,  # the agent's logging stays as its owner set it
            proxy_headers=False,
            server_header=False,
            limit_concurrency=4 * self.max_follows,
            timeout_graceful_shutdown=2,
        )
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._sock, self._server = sock, server

    async def close(self) -> None:
        for w in list(self._watches):
            w.end()  # followers read what is left and finish
        server, sock = self._server, self._sock
        self._server = None
        if server is not None and sock is not None:
            server.should_exit = True
            await server.shutdown(sockets=[sock])

    # --- handlers ---------------------------------------------------------------------
    async def _http_error(self, _: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return Refused(
                404,
                "NotFound",
                "no such route on this agent",
                "GET /v1/allocations/{id}/logs or /v1/mesh/logs",
            ).response()
        return JSONResponse(
            {"error": "HTTPError", "message": str(exc.detail)}, status_code=exc.status_code
        )

    async def _alloc_logs(self, request: Request) -> Response:
        try:
            alloc_id = parse_alloc_id(request.path_params["alloc_id"])
            params = request.query_params
            stream, tail, follow = parse_stream(params), parse_tail(params), parse_follow(params)
            logs = self.alloc_root / alloc_id / "logs"
            if not await asyncio.to_thread(logs.is_dir):
                raise Refused(
                    404,
                    "NotFound",
                    f"no logs for allocation {alloc_id} on this node",
                    "logs stay on the node that ran the instance; it may not have started "
                    "yet, or its directory was collected",
                )
            return self._stream(logs / f"{stream}.log", tail, follow)
        except Refused as e:
            return e.response()

    async def _mesh_logs(self, request: Request) -> Response:
        try:
            params = request.query_params
            tail, follow = parse_tail(params), parse_follow(params)
            if not await asyncio.to_thread(self.mesh_log.is_file):
                raise Refused(
                    404,
                    "NotFound",
                    "no mesh access log on this node",
                    "the node's HAProxy starts when an instance there has upstreams",
                )
            return self._stream(self.mesh_log, tail, follow)
        except Refused as e:
            return e.response()

    def _stream(self, path: Path, tail: int | None, follow: bool) -> Response:
        watch: Watch | None = None
        if follow:
            if len(self._watches) >= self.max_follows:
                raise Refused(
                    503,
                    "Unavailable",
                    f"this agent already streams {len(self._watches)} followed logs",
                    "try again later, or without follow",
                )
            try:
                watch = Watch(path)
            except FileNotFoundError:
                raise Refused(404, "NotFound", "the log's directory is gone") from None
            except FollowUnavailable as e:
                raise Refused(503, "Unavailable", str(e), "ask without follow") from None
            self._watches.add(watch)

        def release() -> None:
            if watch is not None:
                watch.close()  # idempotent; read_log closes it too
                self._watches.discard(watch)

        content = read_log(path, tail, watch=watch, on_close=release)
        return _ClosingStream(
            content,
            release,
            media_type="text/plain",
            headers={"cache-control": "no-store", "x-content-type-options": "nosniff"},
        )
