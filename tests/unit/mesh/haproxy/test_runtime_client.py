"""The asynchronous runtime API client against a scripted unix socket server: one command,
one answer; a refusal raises ``HaproxyError``; no socket, or no answer, is an ``OSError``;
a session reads a long answer as it comes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from elastin.mesh.haproxy.runtime_client import HaproxyError, RuntimeClient


@asynccontextmanager
async def fake_haproxy(path: Path, answers: dict[str, list[bytes]]) -> AsyncIterator[list[str]]:
    """Answers each command with its chunks, then closes (as HAProxy does after a
    command); an unknown command gets no answer at all. Yields the commands received."""
    received: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        command = (await reader.readline()).decode().strip()
        received.append(command)
        if command not in answers:
            await reader.read()  # until the client gives up
            writer.close()
            return
        for chunk in answers[command]:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    server = await asyncio.start_unix_server(serve, str(path))
    try:
        yield received
    finally:
        server.close()


async def test_a_command_and_its_answer(tmp_path: Path) -> None:
    sock = tmp_path / "haproxy.sock"
    stat = [b"# pxname,svname,scur\n", b"c_a,e_1,3\n"]
    async with fake_haproxy(sock, {"show stat -1 6 -1": stat, "add server b/s": [b""]}) as got:
        client = RuntimeClient(sock)
        assert await client.command("show stat -1 6 -1") == "# pxname,svname,scur\nc_a,e_1,3\n"
        assert await client.command("add server b/s") == ""
    assert got == ["show stat -1 6 -1", "add server b/s"]


async def test_a_refusal_raises_with_haproxys_words(tmp_path: Path) -> None:
    sock = tmp_path / "haproxy.sock"
    refusal = [b"Server still has connections attached to it, cannot remove it.\n"]
    async with fake_haproxy(sock, {"del server b/s": refusal}):
        with pytest.raises(HaproxyError, match="still has connections"):
            await RuntimeClient(sock).command("del server b/s")


async def test_no_socket_or_no_answer_is_an_os_error(tmp_path: Path) -> None:
    sock = tmp_path / "haproxy.sock"
    with pytest.raises(OSError):
        await RuntimeClient(sock).command("show info")
    async with fake_haproxy(sock, {}):
        with pytest.raises(OSError):  # TimeoutError is one
            await RuntimeClient(sock, timeout=0.05).command("show info")


async def test_a_session_reads_as_the_answer_comes(tmp_path: Path) -> None:
    sock = tmp_path / "haproxy.sock"
    cmd = "show info;show events elastin_log -w"
    chunks = [b"Pid: 42\n\n", b'{"a":1}\n', b'{"b":2}\n']
    async with fake_haproxy(sock, {cmd: chunks}):
        sess = await RuntimeClient(sock).session(cmd)
        data = b""
        while chunk := await sess.read(1 << 16):
            data += chunk
        sess.close()
    assert data == b"".join(chunks)
