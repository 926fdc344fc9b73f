"""A real ``elastin server`` in its own process, with a low file limit and small timeouts set
through ``ELASTIN_API_*``: connections that say nothing (or half a head) are closed, one
address cannot take every connection, descriptors running out pauses the accept loop instead
of filling the log with tracebacks or ending the daemon, and bodies over the limit get a 413
with the API's error body. The agent's API shares the same serving code (``elastin.serving``);
one test checks its header timeout in process."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from elastin import serving
from elastin.agent.api import AgentApi


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str = "/v1/status") -> httpx.Response:
        return httpx.get(
            self.url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )


def limit_files(n: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return apply


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def run(nofile: int = 1024, **env: str) -> Daemon:
        data = tmp_path / f"data{len(started)}"
        log = tmp_path / f"server{len(started)}.log"
        full = dict(os.environ, ELASTIN_DATA_DIR=str(data))
        full.update({f"ELASTIN_API_{k.upper()}": v for k, v in env.items()})
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "elastin.cli.main", "server", "--port", "0"],
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=limit_files(nofile),
            )
        info = data / "server.json"
        for _ in range(300):
            if info.exists() and proc.poll() is None:
                try:
                    url = json.loads(info.read_text())["url"]
                    break
                except (ValueError, KeyError):
                    pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        else:
            proc.kill()
            raise AssertionError("the server did not start: " + log.read_text())
        d = Daemon(proc, url, (data / "token").read_text().strip(), log)
        started.append(d)
        return d

    yield run
    for d in started:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(10)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def read_all(s: socket.socket) -> bytes:
    """What the server sends until it closes the connection (10 s at most per read)."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open; got {out!r}") from None
        if not chunk:
            return out
        out += chunk


def body_of(answer: bytes) -> dict[str, str]:
    data: dict[str, str] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return data


def test_a_connection_that_sends_nothing_or_half_a_head_is_closed(
    start: Callable[..., Daemon],
) -> None:
    d = start(header_timeout="0.5", idle_timeout="0.5")
    silent = connect(d.port)
    half = connect(d.port)
    half.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
    with silent, half:
        assert read_all(silent) == b""  # said nothing: closed without a word
        answer = read_all(half)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert "ELASTIN_API_HEADER_TIMEOUT" in body_of(answer)["hint"]
    # a keep-alive connection idle after its answer is closed too
    with connect(d.port) as s:
        head = f"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {d.token}\r\n\r\n"
        s.sendall(head.encode())
        assert read_all(s).startswith(b"HTTP/1.1 200 ")
    assert d.get().status_code == 200
    assert d.proc.poll() is None


def test_a_byte_after_an_answer_does_not_hold_a_connection_open(
    start: Callable[..., Daemon],
) -> None:
    """uvicorn's keep-alive timer stopped at any byte: a bare CRLF after an answer, or one
    byte of a body the server never read (a 401 first), held the connection for ever — with
    no token, enough of them blocked the API for everyone."""
    d = start(header_timeout="60", idle_timeout="0.5")  # only the idle timer can close
    with connect(d.port) as s:
        head = f"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {d.token}\r\n\r\n"
        s.sendall(head.encode())
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        s.sendall(b"\r\n")  # not a request
        read_all(s)  # closed by the idle timeout (read_all fails if it stays open)
    with connect(d.port) as s:  # no token, and a body that will not come whole
        s.sendall(b"POST /v1/apps HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx")
        answer = read_all(s)
        assert answer.startswith(b"HTTP/1.1 401 ") and b"connection: close" in answer.lower()
    assert d.proc.poll() is None


def test_one_address_cannot_take_every_connection(start: Callable[..., Daemon]) -> None:
    d = start(max_per_client="4", header_timeout="60")
    held = [connect(d.port) for _ in range(4)]
    try:
        with connect(d.port) as over:
            over.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_all(over)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        body = body_of(answer)
        assert body["error"] == "Unavailable"
        assert "127.0.0.1" in body["message"]
        assert "ELASTIN_API_MAX_PER_CLIENT" in body["hint"]
        # another address is served meanwhile
        with connect(d.port, source="127.0.0.2") as other:
            other.sendall(
                f"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Authorization: Bearer {d.token}\r\n\r\n".encode()
            )
            assert read_all(other).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()
    for _ in range(100):  # the server sees the closes
        if d.get().status_code == 200:
            break
        time.sleep(0.05)
    assert d.get().status_code == 200


def test_at_the_total_cap_new_connections_wait_instead_of_failing(
    start: Callable[..., Daemon],
) -> None:
    d = start(max_connections="6", max_per_client="100", header_timeout="60")
    held = [connect(d.port) for _ in range(6)]
    try:
        waiting = connect(d.port)  # in the listen backlog: not accepted yet
        waiting.sendall(
            f"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {d.token}\r\n\r\n".encode()
        )
        for _ in range(200):
            if "connections open, the most it takes" in d.stderr():
                break
            time.sleep(0.05)
        assert "6 connections open, the most it takes" in d.stderr()
        held.pop().close()  # room for one: the waiting request is answered
        with waiting:
            assert read_all(waiting).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()


def test_running_out_of_descriptors_pauses_accepting_and_the_daemon_lives(
    start: Callable[..., Daemon],
) -> None:
    # caps far above the file limit: the kernel's EMFILE is what stops accepting
    d = start(nofile=96, max_connections="100000", max_per_client="100000", header_timeout="60")
    flood: list[socket.socket] = []
    try:
        for _ in range(200):  # more than the daemon can hold: the rest wait in the backlog
            flood.append(connect(d.port))
        for _ in range(200):
            if "cannot accept connections" in d.stderr():
                break
            time.sleep(0.05)
        log = d.stderr()
        assert "cannot accept connections" in log, log
        assert d.proc.poll() is None
    finally:
        for s in flood:
            s.close()
    for _ in range(200):
        try:
            if d.get().status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    assert d.get().status_code == 200
    log = d.stderr()
    assert "Traceback" not in log, log
    assert log.count("cannot accept connections") <= 2, log  # one line, not one per accept
    assert d.proc.poll() is None


def test_a_body_over_the_limit_is_413_with_the_api_error_body(
    start: Callable[..., Daemon],
) -> None:
    d = start(max_body="65536")
    auth = {"Authorization": f"Bearer {d.token}"}
    big = json.dumps({"spec": "x" * (1 << 20)}).encode()
    said = httpx.post(d.url + "/v1/apps", content=big, headers=auth, timeout=10)
    assert said.status_code == 413
    assert said.json()["error"] == "TooLarge"
    assert "65536" in said.json()["message"]
    assert "ELASTIN_API_MAX_BODY" in said.json()["hint"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked
        yield b'{"spec": "'
        for _ in range(64):
            yield b"x" * 16384
        yield b'"}'

    chunked = httpx.post(d.url + "/v1/apps", content=chunks(), headers=auth, timeout=10)
    assert chunked.status_code == 413
    assert chunked.json()["error"] == "TooLarge"
    # under the limit: the usual answer (a spec error here), and the daemon goes on
    small = httpx.post(d.url + "/v1/apps", json={"spec": "app: ["}, headers=auth, timeout=10)
    assert small.status_code == 422
    assert d.get().status_code == 200


async def test_the_agent_api_closes_a_connection_that_sends_nothing(tmp_path: Path) -> None:
    import asyncio

    api = AgentApi(
        tmp_path,
        tmp_path / "mesh.log",
        "t0ken",
        limits=serving.Limits(header_timeout=0.3),
    )
    await api.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        try:
            async with asyncio.timeout(10):
                assert await reader.read() == b""  # closed by the agent
        finally:
            writer.close()
    finally:
        await api.close()
