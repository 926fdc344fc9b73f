"""The gRPC health check against a real grpcio server implementing grpc.health.v1 (the
reference servicer of grpcio-health-checking), and against servers that answer otherwise."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from elastin.agent.health import grpc_health, probe
from elastin.model.workload import HealthCheck
from elastin.testing.fake_driver import exec_here

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextlib.asynccontextmanager
async def grpc_server(*handlers: grpc.GenericRpcHandler) -> AsyncIterator[grpc.aio.Server]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(handlers)
    yield server
    await server.stop(0)


async def start(server: grpc.aio.Server) -> int:
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return port


@pytest.fixture
async def health_server() -> AsyncIterator[int]:
    """The whole server SERVING, shop.Catalog SERVING, shop.Broken NOT_SERVING."""
    health = health_aio.HealthServicer()
    await health.set("shop.Catalog", SERVING)
    await health.set("shop.Broken", NOT_SERVING)
    async with grpc_server() as server:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        yield await start(server)


@pytest.fixture
async def plain_server() -> AsyncIterator[int]:
    """A gRPC server without the health service."""
    async with grpc_server() as server:
        yield await start(server)


@pytest.fixture
async def odd_server() -> AsyncIterator[int]:
    """Answers every check with a status value the protocol does not define (7)."""

    async def check(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return b"\x08\x07"

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}
    )
    async with grpc_server(handler) as server:
        yield await start(server)


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


async def test_a_status_outside_the_protocol_is_unhealthy(odd_server: int) -> None:
    assert await grpc_health("127.0.0.1", odd_server, "", 2.0) == (
        False,
        "gRPC health of the server: 7",
    )


async def test_probe_with_a_check_from_the_spec(health_server: int) -> None:
    check = HealthCheck(type="grpc", port="api", service="shop.Catalog", timeout=2.0)
    assert await probe(check, "127.0.0.1", health_server, exec_here) == (True, "")
    closed = HealthCheck(type="grpc", port="api", timeout=0.5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    ok, why = await probe(closed, "127.0.0.1", free, exec_here)
    assert not ok and why
