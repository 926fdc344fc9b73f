"""The gRPC health check against a real grpcio server implementing grpc.health.v1."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import grpc
import pytest

from elastin.agent.health import (
    HEALTH_METHOD,
    decode_health_status,
    encode_health_request,
    grpc_health,
    probe,
)
from elastin.model.workload import HealthCheck

pytestmark = pytest.mark.integration

# what the server answers per service name: 1 SERVING, 2 NOT_SERVING
STATUS = {"": 1, "shop.Catalog": 1, "shop.Broken": 2}


def _decode_request(data: bytes) -> str:
    # field 1 (service), length-delimited; a one-byte length is enough for these names
    return data[2 : 2 + data[1]].decode() if data else ""


async def _check(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    service = _decode_request(request)
    if service not in STATUS:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service}")
    return b"\x08" + bytes([STATUS[service]])


@contextlib.asynccontextmanager
async def grpc_server(*handlers: grpc.GenericRpcHandler) -> AsyncIterator[int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@pytest.fixture
async def health_server() -> AsyncIterator[int]:
    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(_check)}
    )
    async with grpc_server(handler) as port:
        yield port


@pytest.fixture
async def plain_server() -> AsyncIterator[int]:
    """A gRPC server without the health service."""
    async with grpc_server() as port:
        yield port


def test_codec_matches_protobuf_encoding() -> None:
    assert HEALTH_METHOD == "/grpc.health.v1.Health/Check"
    assert encode_health_request("") == b""
    assert encode_health_request("a.B") == b"\x0a\x03a.B"
    assert decode_health_status(b"\x08\x01") == 1
    assert decode_health_status(b"") == 0
    assert decode_health_status(b"\x12\x02hi\x08\x02") == 2  # unknown field skipped


async def test_serving_and_not_serving(health_server: int) -> None:
    assert await grpc_health("127.0.0.1", health_server, "", 2.0) == (True, "")
    assert await grpc_health("127.0.0.1", health_server, "shop.Catalog", 2.0) == (True, "")
    ok, why = await grpc_health("127.0.0.1", health_server, "shop.Broken", 2.0)
    assert not ok and why == "gRPC health of service 'shop.Broken': NOT_SERVING"
    ok, why = await grpc_health("127.0.0.1", health_server, "nope", 2.0)
    assert not ok and why.startswith("gRPC NOT_FOUND")


async def test_a_server_without_the_health_service(plain_server: int) -> None:
    ok, why = await grpc_health("127.0.0.1", plain_server, "", 2.0)
    assert not ok and "does not implement grpc.health.v1" in why


async def test_probe_with_a_check_from_the_spec(health_server: int) -> None:
    check = HealthCheck(type="grpc", port="api", service="shop.Catalog", timeout=2.0)
    assert await probe(check, "127.0.0.1", health_server, {}, "") == (True, "")
    closed = HealthCheck(type="grpc", port="api", timeout=0.5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    ok, why = await probe(closed, "127.0.0.1", free, {}, "")
    assert not ok and why
