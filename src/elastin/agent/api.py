"""The agent's own HTTP API: this node's instances' logs and its mesh access log, streamed,
and commands run inside its running instances (``elastin exec``).

The server does not read a node's disk: it relays these routes (``server/relay.py``), as
Nomad's servers relay its clients' file-system API. The agent publishes where it listens
as its node's ``agent.api`` attribute (``host:port``).

Routes; every one needs the cluster token (``Authorization: Bearer <token>``, checked by
``elastin.auth.RequireToken``; a 401 JSON body otherwise)::

    GET  /v1/allocations/{alloc_id}/logs?stream=stdout|stderr&tail=N&follow=bool
                                       &since=RFC3339|DURATION&timestamps=bool
    GET  /v1/mesh/logs?tail=N&follow=bool
    POST /v1/allocations/{alloc_id}/exec   {"command": [argv...], "timeout": seconds}

The logs answer ``text/plain``, streamed: the last ``tail`` lines (default 100; 0: the whole
file), then with ``follow`` what is appended, as it is written (``agent/logfiles.py``: inotify,
no polling; through copy-truncate rotations). An instance's lines carry the time the task
driver's timestamper read them; ``since`` (``2024-05-01T12:00:00Z`` or a duration back from
now, ``90s``, ``10m``, ``1h30m``) leaves out the lines before it, ``timestamps`` keeps each
line's time in front of it (``2024-05-01T12:00:00.123456Z line``). Errors are JSON
``{"error", "message", "hint"}``: 422 for a bad parameter, 404 when this node has no such
logs, 503 when it cannot follow (too many followers, no inotify). An instance started on a
node without the timestamper (``logfiles.STAMPED`` absent) has lines without times: its log
is served as written, and ``since`` or ``timestamps`` answer 422 saying so.

``exec`` runs the argv (never a shell string) inside the running instance, as its health
checks run (its mount namespace, cgroups, user, environment, workdir), and answers
``application/x-ndjson``: ``{"stream": "stdout"|"stderr", "data": <base64>}`` as it writes,
then ``{"exit_code": N|null, "signal": N|null, "timed_out": bool}``; it is killed after
``timeout`` seconds (default 30, at most 3600) or when the caller goes away. 404 when the
allocation does not run on this node, 409 when it is not running now.

The proxy's wake (scale to zero) is served apart, on 127.0.0.1: ``agent/wake.py``.

Nothing from the request reaches a path unchecked: ``alloc_id`` must be 1-32 lowercase hex
digits (what the server makes), ``stream`` one of two names; the files are
``<alloc_root>/<alloc_id>/logs/<stream>.log`` and the one mesh log the agent was given.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from elastin import serving
from elastin.agent.drivers.base import ExecEnd, Execs, Handle, InstanceConfig, StartError
from elastin.agent.logfiles import FollowUnavailable, StampFilter, Watch, is_stamped, read_log
from elastin.auth import RequireToken
from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import Allocation

log = logging.getLogger("elastin.agent.api")

ALLOC_ID = re.compile(r"[0-9a-f]{1,32}")
STREAMS = ("stdout", "stderr")
DEFAULT_TAIL = 100
MAX_TAIL = 100_000
MAX_FOLLOWS = 64  # followers at once (each holds an inotify instance and a file)
DURATION = re.compile(r"(?:\d{1,9}(?:\.\d{1,9})?(?:ms|s|m|h|d))+")
DURATION_PART = re.compile(r"(\d{1,9}(?:\.\d{1,9})?)(ms|s|m|h|d)")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
EXEC_TIMEOUT = 30.0  # seconds a command may run inside an instance, unless asked otherwise
EXEC_MAX_TIMEOUT = 3600.0
EXEC_MAX_ARGS = 4096
EXEC_MAX_BYTES = 256 * 1024  # the argv's bytes in all
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
        return serving.json_error(self.status, self.error, self.message, self.hint)


def invalid(message: str, hint: str = "") -> Refused:
    return Refused(422, "Invalid", message, hint)


def unstamped(alloc_id: str) -> Refused:
    """The answer to ``since`` or ``timestamps`` for an instance whose output has no times
    (its node had no timestamper when it started: ``logfiles.STAMPED``)."""
    return invalid(
        f"this instance's output has no timestamps (allocation {alloc_id}): install Debian's "
        "perl on its node",
        "its node's agent found no Perl with Time::HiRes for the log timestamper when it "
        "started the instance: install the perl package there (apt-get install perl), restart "
        "that agent and then the instance (`elastin restart`); until then ask without "
        "--since and --timestamps",
    )


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


def parse_bool(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "false").lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise invalid(f"{name} must be true or false, not {value[:40]!r}")


def parse_follow(params: Mapping[str, str]) -> bool:
    return parse_bool(params, "follow")


def parse_since(params: Mapping[str, str], now: float) -> float | None:
    """``since`` as Unix seconds: an RFC 3339 time with its offset (``2024-05-01T12:00:00Z``)
    or a duration back from ``now`` (``90s``, ``10m``, ``1h30m``, ``2d``); None when absent."""
    value = params.get("since", "").strip()
    if not value:
        return None
    if DURATION.fullmatch(value):
        back = sum(float(n) * UNIT_SECONDS[u] for n, u in DURATION_PART.findall(value))
        return now - back
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise invalid(
            f"since must be a time or a duration, not {value[:40]!r}",
            "a time with its offset, like 2024-05-01T12:00:00Z, or a duration back from "
            "now, like 90s, 10m or 1h30m",
        )
    return when.timestamp()


@dataclass(frozen=True)
class ExecRequest:
    command: tuple[str, ...]
    timeout: float


def parse_exec(body: bytes) -> ExecRequest:
    """An exec request's JSON body: ``command`` a non-empty list of strings (an argv, never
    a shell string), ``timeout`` seconds (default 30, at most 3600)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise invalid('the body must be a JSON object: {"command": [...], "timeout": 30}')
    command = data.get("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(a, str) for a in command)
        or not command[0]
    ):
        raise invalid(
            "command must be a non-empty list of strings (the program and its arguments)",
            'e.g. {"command": ["ls", "-l", "/tmp"]}; a shell line needs ["sh", "-c", "..."]',
        )
    if len(command) > EXEC_MAX_ARGS or sum(len(a.encode()) for a in command) > EXEC_MAX_BYTES:
        raise invalid(
            f"command is too long (at most {EXEC_MAX_ARGS} arguments, {EXEC_MAX_BYTES} bytes)"
        )
    if any("\0" in a for a in command):
        raise invalid("command's arguments may not contain a NUL character")
    timeout = data.get("timeout", EXEC_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or not 0 < timeout <= EXEC_MAX_TIMEOUT
    ):
        raise invalid(f"timeout must be a number of seconds above 0, at most {EXEC_MAX_TIMEOUT:g}")
    return ExecRequest(tuple(command), float(timeout))


def exec_frame(item: Any) -> bytes:
    """One NDJSON line of an exec's answer."""
    if isinstance(item, ExecEnd):
        body: dict[str, Any] = {
            "exit_code": item.exit_code,
            "signal": item.signal,
            "timed_out": item.timed_out,
        }
    else:
        body = {"stream": item.stream, "data": base64.b64encode(item.data).decode()}
    return json.dumps(body).encode() + b"\n"


# --------------------------------------------------------------------------- exec targets


@dataclass(frozen=True)
class ExecTarget:
    """What ``exec`` needs of an allocation this agent runs."""

    name: str  # app.workload[index]
    driver: object  # an ``Execs`` driver can run commands in its instances
    handle: Handle | None  # None: no instance runs now
    env: dict[str, str]  # the instance's environment


class _Runner(Protocol):
    @property
    def alloc(self) -> Allocation: ...
    @property
    def driver(self) -> object: ...
    @property
    def handle(self) -> Handle | None: ...
    @property
    def instance(self) -> InstanceConfig | None: ...


def runner_targets(runners: Mapping[str, _Runner]) -> Callable[[str], ExecTarget | None]:
    """``AgentApi``'s ``exec_target`` over the agent's runners (``Agent.runners``)."""

    def target(alloc_id: str) -> ExecTarget | None:
        r = runners.get(alloc_id)
        if r is None:
            return None
        # the environment the instance was started with: looking it up takes nothing (no
        # port is reserved, none can be missing)
        handle, instance = r.handle, r.instance
        env = dict(instance.env) if handle is not None and instance is not None else {}
        return ExecTarget(r.alloc.name, r.driver, handle, env)

    return target


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
        exec_target: Callable[[str], ExecTarget | None] | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        """``exec_target``: the allocations this agent runs, for ``exec`` (``runner_targets``;
        None: exec answers that no instance runs here)."""
        if not token:
            raise ValueError("the agent's API needs the cluster token")
        self.alloc_root = alloc_root
        self.mesh_log = mesh_log
        self.host = host
        self.want_port = port
        self.max_follows = max_follows
        self.exec_target = exec_target
        self.clock = clock
        # timeouts, connection caps, body size (elastin.serving); ELASTIN_API_* by default
        self.limits = limits if limits is not None else serving.Limits.from_env()
        self._watches: set[Watch] = set()
        self._listening: serving.Listening | None = None
        app = Starlette(
            routes=[
                Route("/v1/allocations/{alloc_id}/logs", self._alloc_logs, methods=["GET"]),
                Route("/v1/allocations/{alloc_id}/exec", self._exec, methods=["POST"]),
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
        assert self._listening is not None, "start() first"
        return self._listening.port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def follows(self) -> int:
        """Follows in progress."""
        return len(self._watches)

    async def start(self) -> None:
        self._listening = await serving.listen(
            self.app,
            self.limits,
            self.host,
            self.want_port,
            name="the agent's API",
            limit_concurrency=4 * self.max_follows,
            timeout_graceful_shutdown=2,
        )

    async def close(self) -> None:
        for w in list(self._watches):
            w.end()  # followers read what is left and finish
        if self._listening is not None:
            await self._listening.stop()

    # --- handlers ---------------------------------------------------------------------
    async def _http_error(self, _: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return Refused(
                404,
                "NotFound",
                "no such route on this agent",
                "GET /v1/allocations/{id}/logs or /v1/mesh/logs, POST /v1/allocations/{id}/exec",
            ).response()
        return serving.http_error(exc)

    async def _alloc_logs(self, request: Request) -> Response:
        try:
            alloc_id = parse_alloc_id(request.path_params["alloc_id"])
            params = request.query_params
            stream, tail, follow = parse_stream(params), parse_tail(params), parse_follow(params)
            since = parse_since(params, self.clock.time())
            timestamps = parse_bool(params, "timestamps")
            logs = self.alloc_root / alloc_id / "logs"
            if not await asyncio.to_thread(logs.is_dir):
                raise Refused(
                    404,
                    "NotFound",
                    f"no logs for allocation {alloc_id} on this node",
                    "logs stay on the node that ran the instance; it may not have started "
                    "yet, or its directory was collected",
                )
            stamps: StampFilter | None = None
            if await asyncio.to_thread(is_stamped, logs):
                stamps = StampFilter(timestamps, since)
            elif since is not None or timestamps:  # its bytes are all the workload's own
                raise unstamped(alloc_id)
            return self._stream(logs / f"{stream}.log", tail, follow, stamps)
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

    def _stream(
        self, path: Path, tail: int | None, follow: bool, stamps: StampFilter | None = None
    ) -> Response:
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
        if stamps is not None:
            content = _filtered(content, stamps)
        return _ClosingStream(
            content,
            release,
            media_type="text/plain",
            headers={"cache-control": "no-store", "x-content-type-options": "nosniff"},
        )

    async def _exec(self, request: Request) -> Response:
        try:
            alloc_id = parse_alloc_id(request.path_params["alloc_id"])
            req = parse_exec(await request.body())
            target = self.exec_target(alloc_id) if self.exec_target is not None else None
            if target is None:
                raise Refused(
                    404,
                    "NotFound",
                    f"allocation {alloc_id} does not run on this node",
                    "see `elastin ps` for the instances that run",
                )
            if target.handle is None:
                raise Refused(
                    409,
                    "Conflict",
                    f"{target.name} is not running now",
                    "it may be starting, restarting or stopped; see `elastin ps`",
                )
            driver = target.driver
            if not isinstance(driver, Execs):
                raise Refused(
                    409,
                    "Conflict",
                    f"{target.name}'s driver cannot run commands in its instances",
                )
            try:
                proc = await driver.exec_start(target.handle, req.command, target.env)
            except StartError as e:
                raise Refused(409, "Conflict", f"{target.name}: {e}", "see `elastin ps`") from None
        except Refused as e:
            return e.response()
        output = driver.exec_output(proc, req.timeout)

        async def frames() -> AsyncIterator[bytes]:
            try:
                async for item in output:
                    yield exec_frame(item)
            finally:
                await output.aclose()

        def release() -> None:  # the caller went away before the output began, too
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)

        return _ClosingStream(
            frames(),
            release,
            media_type="application/x-ndjson",
            headers={"cache-control": "no-store", "x-content-type-options": "nosniff"},
        )


async def _filtered(content: AsyncIterator[bytes], stamps: StampFilter) -> AsyncIterator[bytes]:
    """``content`` through ``stamps`` (whole lines: a partial one waits for its end)."""
    try:
        async for chunk in content:
            if out := stamps.feed(chunk):
                yield out
        if rest := stamps.end():
            yield rest
    finally:
        aclose = getattr(content, "aclose", None)
        if aclose is not None:
            await aclose()
