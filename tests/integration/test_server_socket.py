"""The API socket: accepted connections get TCP_NODELAY (asyncio sets it only on sockets made
with IPPROTO_TCP); without it each keep-alive answer waited for the client's delayed ACK."""

from __future__ import annotations

import socket

import pytest

from elastin.server.app import bind

pytestmark = pytest.mark.integration


def test_api_socket_is_tcp_so_answers_are_not_delayed() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        sock.settimeout(5)  # bind() made it non-blocking for asyncio
        with socket.create_connection(sock.getsockname()[:2]):
            conn, _ = sock.accept()
            with conn:
                assert conn.proto == socket.IPPROTO_TCP  # what asyncio checks for NODELAY
    finally:
        sock.close()
