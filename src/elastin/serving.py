"""Listening and serving limits shared by the server's API and each agent's API.

Both APIs are uvicorn (httptools) behind an accept loop of ours, so that no client can
exhaust the daemon's file descriptors or stall it:

* **header timeout** — a connection must send a complete request head within
  ``header_timeout`` seconds of connecting (or of its request's first byte): uvicorn by itself
  never closes a connection that sends nothing, nor one that sends half a head. A head that
  began gets a 408; a connection that said nothing is closed.
* **idle timeout** — a keep-alive connection with no new request for ``idle_timeout``
  seconds after an answer is closed (uvicorn's keep-alive timeout).
* **head size** — a request head over ``max_head`` bytes gets a 431 and is closed.
* **connections in total** — at ``max_connections`` open connections the accept loop stops
  accepting: new clients wait in the listen backlog (back-pressure, not an error) until one
  closes. The default leaves a quarter of the process's file limit (``RLIMIT_NOFILE``) for
  everything else the daemon opens.
* **connections per client address** — a connection over ``max_per_client`` from one address
  is answered at once with a 503 and the API's error body, and closed.
* **body size** — a request body over ``max_body`` bytes gets a 413 with the API's error body,
  whether it says its ``Content-Length`` (answered before any of it is read) or comes chunked
  (answered when the limit is crossed, without reading the rest into memory).
* **no descriptors left** — ``EMFILE``/``ENFILE`` (and ``ENOBUFS``/``ENOMEM``) while accepting
  pause the accept loop and log one line, not a traceback per attempt; it resumes when a
  connection closes (or after a second), and says so. It never ends the loop.

One addition to ASGI for streamed answers (``PUSH``, found with ``pusher(scope)``):
``scope["extensions"]["elastin.push"]["write"]`` is a plain function that writes one chunk of
the answer at once, without awaiting, and says whether it could (the answer is started and
chunked, the client is connected and reading). The server's mesh feed writes a new version to
every agent's stream with it, from one task, instead of waking a task per stream
(bench/propagation.py). When it returns False the chunk goes the ASGI way (``await send``),
which waits for a slow reader.

Every limit can be set through the environment (``Limits.from_env``), e.g.
``ELASTIN_API_MAX_BODY=16777216``; docs/api.md lists them. ``accept_loop`` is usable on its own
(the agent's DNS server over TCP uses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import resource
import socket
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import uvicorn
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

log = logging.getLogger("elastin.serving")

ENV_PREFIX = "ELASTIN_API_"
MiB = 1 << 20
# out of descriptors or kernel memory: wait for one to be freed, then accept again
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# the client gave up between the kernel's accept queue and our accept(): nothing to do
GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN})
RETRY_SECONDS = 1.0  # out of descriptors and none of ours closed: try again after this
LINGER_SECONDS = 2.0  # after an error answer: how long the client's leftovers are read
SAY_EVERY = 60.0  # seconds: the most often running out of descriptors is logged
BATCH = 64  # connections accepted at most in one go before letting the loop breathe
PUSH = "elastin.push"  # the scope extension that writes a streamed chunk without awaiting


def default_max_connections() -> int:
    """Three quarters of the process's file limit (the rest: stores, relays, logs, pipes)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 65536
    return max(16, soft * 3 // 4)


@dataclass(frozen=True)
class Limits:
    """What one API accepts from its clients (module docstring). 0 for a count: the default
    worked out from the file limit."""

    header_timeout: float = 10.0
    idle_timeout: float = 5.0
    max_head: int = 64 << 10
    max_body: int = 4 * MiB
    max_connections: int = 0
    max_per_client: int = 0

    @property
    def total(self) -> int:
        return self.max_connections or default_max_connections()

    @property
    def per_client(self) -> int:
        return self.max_per_client or max(1, self.total // 2)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **defaults: Any) -> Limits:
        """``ELASTIN_API_HEADER_TIMEOUT``, ``_IDLE_TIMEOUT``, ``_MAX_HEAD``, ``_MAX_BODY``,
        ``_MAX_CONNECTIONS``, ``_MAX_PER_CLIENT`` over ``defaults`` over the built-in values.
        A value that is not a positive number is an error that names the variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = dict(defaults)
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = env.get(name, "").strip()
            if not raw:
                continue
            kind = float if f.type in ("float", float) else int
            try:
                value = kind(raw)
                if not math.isfinite(value) or value <= 0:  # nan passed `<= 0`
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"{name}={raw!r} is not a positive "
                    f"{'number' if kind is float else 'whole number'}; "
                    f"unset it for the default ({getattr(cls, f.name) or 'from the file limit'})"
                ) from None
            values[f.name] = value
        return cls(**values)


# --------------------------------------------------------------------------- listening


def bind(host: str, port: int, *, what: str, hint: str = "", backlog: int = 1024) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port``; an error says which ``what``
    could not listen there and ``hint`` what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
    # without it every keep-alive answer waited ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        more = f"; {hint}" if hint else ""
        raise OSError(
            e.errno, f"{what} cannot listen on {host}:{port}: {e.strerror}{more}"
        ) from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class Guard:
    """Counts open connections, in total and per client address; wakes the accept loop when
    one closes."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open = 0
        self.by_client: dict[str, int] = {}
        self._freed = asyncio.Event()

    def full(self) -> bool:
        return self.open >= self.total

    def admit(self, client: str) -> bool:
        """Count a connection from ``client``: False when that address has its share (the
        connection counts in the total until it is closed, not in the address's share)."""
        self.open += 1
        n = self.by_client.get(client, 0)
        if n >= self.per_client:
            return False
        self.by_client[client] = n + 1
        return True

    def release(self, client: str, admitted: bool) -> None:
        if admitted:
            n = self.by_client.get(client, 0) - 1
            if n > 0:
                self.by_client[client] = n
            else:
                self.by_client.pop(client, None)
        self.open = max(0, self.open - 1)
        self._freed.set()

    async def freed(self, timeout: float) -> None:
        """Until a connection closes, or ``timeout`` seconds."""
        self._freed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._freed.wait()


async def accept_loop(
    sock: socket.socket,
    factory: Callable[[], asyncio.Protocol],
    guard: Guard,
    name: str,
    cap_hint: str = "lower ELASTIN_API_MAX_CONNECTIONS",
) -> None:
    """Accept connections on ``sock`` for protocols from ``factory`` until cancelled, at most
    ``guard.total`` open at once; out of descriptors, pause and log one line (``name`` says
    whose loop, ``cap_hint`` how to lower its cap). Any other error is logged and the loop
    goes on after a pause: it never ends silently while its owner looks healthy. Each
    protocol calls ``guard.admit``/``release`` itself (it knows its peer)."""
    loop = asyncio.get_running_loop()
    full = False  # at guard.total: said once until there is room again
    told = False  # out of descriptors: said (once a minute at most) and not yet resumed
    last_told = -SAY_EVERY
    missed = 0  # times out of descriptors since the last line about it
    while True:
        if guard.full():
            if not full:
                log.warning(
                    "%s: %d connections open, the most it takes; new ones wait until one closes",
                    name,
                    guard.open,
                )
                full = True
            await guard.freed(RETRY_SECONDS)
            continue
        full = False
        try:
            conn, _ = await loop.sock_accept(sock)
        except OSError as e:
            if e.errno in EXHAUSTED:
                missed += 1
                if loop.time() - last_told >= SAY_EVERY:
                    log.warning(
                        "%s: cannot accept connections: %s (%d open here%s); paused until one "
                        "closes — raise the file limit (ulimit -n) or %s",
                        name,
                        e.strerror or errno.errorcode.get(e.errno or 0, "?"),
                        guard.open,
                        f"; {missed} times since the last such line" if missed > 1 else "",
                        cap_hint,
                    )
                    told, last_told, missed = True, loop.time(), 0
                await guard.freed(RETRY_SECONDS)
                continue
            if e.errno in GONE:
                continue
            log.warning("%s: cannot accept connections: %s; trying again", name, e)
            await asyncio.sleep(RETRY_SECONDS)
            continue
        if told:
            log.warning("%s: accepting connections again (%d open)", name, guard.open)
            told = False
        conns = [conn]
        # what else is waiting, without a trip through the loop each
        while len(conns) < BATCH and guard.open + len(conns) < guard.total:
            try:
                more, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno in GONE:
                    continue
                break  # EMFILE and the rest: the next sock_accept says it
            conns.append(more)
        for c in conns:
            c.setblocking(False)
            try:
                await loop.connect_accepted_socket(factory, c)
            except OSError as e:  # the peer went away meanwhile
                log.debug("%s: accepted connection lost: %s", name, e)
                c.close()
            except Exception:  # one connection's failure is not the listener's
                log.exception("%s: cannot serve an accepted connection", name)
                c.close()


# --------------------------------------------------------------------------- HTTP


def error_body(error: str, message: str, hint: str = "") -> dict[str, str]:
    """The APIs' JSON error body: what kind of error, what is wrong and (when there is
    something to say) how to fix it."""
    body = {"error": error, "message": message}
    if hint:
        body["hint"] = hint
    return body


def json_error(status: int, error: str, message: str, hint: str = "") -> JSONResponse:
    """An answer with the APIs' JSON error body (the agent's API and its wake listener)."""
    return JSONResponse(error_body(error, message, hint), status_code=status)


def http_error(exc: HTTPException) -> JSONResponse:
    """Starlette's own refusal (a route or method it does not serve) with the JSON error
    body instead of its plain text."""
    return json_error(exc.status_code, "HTTPError", str(exc.detail))


def error_response(status: int, reason: str, error: str, message: str, hint: str = "") -> bytes:
    """A whole HTTP/1.1 answer with the APIs' JSON error body; the connection closes after."""
    data = json.dumps(error_body(error, message, hint)).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nconnection: close\r\n\r\n"
    ).encode() + data


def _pusher(cycle: RequestResponseCycle) -> Callable[[bytes], bool]:
    """``PUSH`` for one request: write ``data`` as one chunk of its streamed answer now.
    False, writing nothing, unless the answer is started, chunked and not complete, the
    client is connected, and its socket takes more (uvicorn's flow control has not paused
    writing): then the caller sends it with ``await send`` (which waits for the reader)."""

    def push(data: bytes) -> bool:
        try:
            ready = not (
                cycle.disconnected
                or not cycle.response_started
                or cycle.response_complete
                or not cycle.chunked_encoding
                or cycle.flow.write_paused
            )
        except AttributeError as e:  # uvicorn's internals moved: say so once, go the ASGI way
            _say_push_broken(e)
            return False
        if not ready:
            return False
        if data:  # an empty chunk would end the answer
            cycle.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        return True

    return push


_push_broken: list[str] = []


def _say_push_broken(e: AttributeError) -> None:
    if not _push_broken:
        _push_broken.append(str(e))
        log.warning(
            "streamed answers go the slower ASGI way: this uvicorn (%s) lacks what PUSH reads"
            " (%s); Elastin was tested with uvicorn 0.29-0.55",
            uvicorn.__version__,
            e,
        )


def pusher(scope: Mapping[str, Any]) -> Callable[[bytes], bool] | None:
    """The request's ``PUSH`` writer, or None when the server does not offer it."""
    write = scope.get("extensions", {}).get(PUSH, {}).get("write")
    return write if callable(write) else None


class _Http(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header timeout, the head size limit and the
    per-client connection cap."""

    def __init__(self, limits: Limits, guard: Guard, **kw: Any) -> None:
        super().__init__(**kw)
        self._limits = limits
        self._guard = guard
        self._peer = ""
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._began = False  # a request's first byte came, its head is not complete
        self._refused = False  # answered with an error: what comes is read and dropped
        self._drained = 0  # body bytes dropped after an early answer (a 413)

    # -- the connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peer = self.client[0] if self.client else ""
        self._admitted = self._guard.admit(self._peer)
        if not self._admitted:
            self._refuse(
                503,
                "Service Unavailable",
                "Unavailable",
                f"too many connections from {self._peer} ({self._guard.per_client} open; "
                "the most one address may hold)",
                "close idle connections, or raise ELASTIN_API_MAX_PER_CLIENT where this API runs",
            )
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._guard.release(self._peer, self._admitted)
        self._admitted = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the answer is sent; the request is read only to close cleanly
        super().data_received(data)
        if self._began and self._head_timer is not None and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_head:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    "TooLarge",
                    f"the request's head is over {self._limits.max_head} bytes",
                    "send fewer or shorter headers, or raise ELASTIN_API_MAX_HEAD",
                )

    # -- the parser's callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._began = True
        self._head_bytes = 0
        self._arm()  # the header timeout, from this request's first byte

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            # our own idle timer, stopped only by the next request's first byte: uvicorn's
            # keep-alive timer stops at *any* byte, so "\r\n" or one byte of a body the app
            # did not read (a 401 before it) held a connection open for ever
            self._arm(self._limits.idle_timeout)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._began = False
        scope = self.scope
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is scope:  # not an upgrade: a request to answer
            scope.setdefault("extensions", {})[PUSH] = {"write": _pusher(cycle)}

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # answered before the body was read (a 413): the rest is dropped as it comes,
            # so that the client reads the answer instead of a reset; not forever
            self._drained += len(body)
            if self._drained > 4 * self._limits.max_body + MiB:
                self.transport.close()
            return
        super().on_body(body)

    # -- the timer
    def _arm(self, seconds: float | None = None) -> None:
        """(Re)start the one timer: the header timeout, or ``seconds`` (idle after an answer)."""
        self._disarm()
        wait = self._limits.header_timeout if seconds is None else seconds
        self._head_timer = self.loop.call_later(wait, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._began:
            self._refuse(
                408,
                "Request Timeout",
                "Timeout",
                f"the request's head did not come whole within {self._limits.header_timeout:g} s",
                "send the request at once after connecting, or raise ELASTIN_API_HEADER_TIMEOUT",
            )
        else:
            self.transport.close()  # said nothing: nobody to tell

    def _refuse(self, status: int, reason: str, error: str, message: str, hint: str) -> None:
        """Answer and close "lingering": send the answer and our FIN, then read and drop
        what the client still sends until it closes (or ``LINGER_SECONDS``). Closing with
        unread bytes would send a reset, and the client would lose the answer."""
        self._disarm()
        if self.transport.is_closing() or self._refused:
            return
        self._refused = True
        self.transport.write(error_response(status, reason, error, message, hint))
        self.transport.write_eof()
        self.transport.resume_reading()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over ``max_body`` bytes gets a 413 with the API's
    error body. A ``Content-Length`` over it is answered before anything is read; a chunked
    body is counted as the application reads it, and the application's own answer to the
    read that crossed the limit is replaced by the 413."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_body:
                    await self._too_large(send, int(value))
                    return
                break
        seen = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    over = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over:
                return  # the application's answer to a read that failed: ours goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._too_large(send, None)

    async def _too_large(self, send: Send, size: int | None) -> None:
        said = f"{size} bytes" if size is not None else "a chunked body"
        body = error_body(
            "TooLarge",
            f"the request's body is too large ({said}; the most is {self.max_body} bytes)",
            "a spec this large is unusual: split it into several applications, or "
            "raise the limit with ELASTIN_API_MAX_BODY=<bytes> where this API runs",
        )
        data = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    # no "connection: close": the server drops the rest of the body as it
                    # comes (bounded) so that the client reads this instead of a reset
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})


class Server(uvicorn.Server):
    """uvicorn serving ``app`` within ``limits`` on sockets from ``bind``: ``serve([sock])``
    until ``should_exit``, or ``startup([sock])`` … ``shutdown([sock])``. Signals are the
    owner's business."""

    def __init__(self, app: ASGIApp, limits: Limits, *, name: str, **config: Any) -> None:
        cfg = uvicorn.Config(
            BodyLimit(app, limits.max_body),
            http="httptools",
            lifespan="off",
            access_log=False,
            loop="asyncio",
            # typed int in uvicorn; it goes to call_later, which takes seconds as a float
            timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]
            **config,
        )
        super().__init__(cfg)
        self.limits = limits
        self.name = name
        self.guard: Guard | None = None
        self._accepting: list[asyncio.Task[None]] = []

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        if not config.loaded:
            config.load()
        if getattr(self, "lifespan", None) is None:
            self.lifespan = config.lifespan_class(config)
        guard = self.guard = Guard(self.limits.total, self.limits.per_client)

        def protocol() -> asyncio.Protocol:
            return _Http(
                self.limits,
                guard,
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
            )

        self.servers = []
        for sock in sockets or []:
            self._accepting.append(
                asyncio.create_task(accept_loop(sock, protocol, guard, self.name))
            )
        self.started = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for task in self._accepting:
            task.cancel()
        for task in self._accepting:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._accepting.clear()
        await super().shutdown(sockets=sockets)


class Listening:
    """A ``Server`` serving on a socket of its own, from ``listen``; ``stop()`` ends it (once)."""

    def __init__(self, sock: socket.socket, server: Server) -> None:
        self.sock = sock
        self.server = server
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.server.should_exit = True
        await self.server.shutdown(sockets=[self.sock])


async def listen(
    app: ASGIApp, limits: Limits, host: str, port: int, *, name: str, **config: Any
) -> Listening:
    """Bind ``host:port`` (``name``: what the listener is, in errors and logs) and start
    serving ``app`` there as a part of a daemon: warnings only, into the owner's logging, no
    proxy headers trusted, no ``server`` header (``config``: more of uvicorn's settings).
    The socket is closed if serving does not start. The agent's API and its wake listener
    start so."""
    sock = bind(host, port, what=name, backlog=128)
    server = Server(
        app,
        limits,
        name=name,
        log_level="warning",
        log_config=None,
        proxy_headers=False,
        server_header=False,
        **config,
    )
    try:
        await server.startup(sockets=[sock])
    except BaseException:
        sock.close()
        raise
    return Listening(sock, server)
