"""The service registry (pure): endpoints per named port, readiness, stopping instances."""

from __future__ import annotations

import pytest

from elastin.mesh.model.registry import find_service, registry
from elastin.model.cluster import Allocation
from elastin.model.spec import parse_spec
from elastin.sdk import EngineError, upstream

APP = parse_spec(
    "app: shop\nservices:\n"
    "  web:\n    command: x\n    upstreams: [api]\n"
    "  api:\n    command: y\n    ports: {http: 0, admin: {port: 0, protocol: tcp}}\n"
    "    health: {http: /, port: http}\n"
)


def alloc(i: str, index: int, **kw: object) -> Allocation:
    base: dict[str, object] = {
        "id": i,
        "app": "shop",
        "workload": "api",
        "index": index,
        "node_id": "n1",
        "status": "running",
        "ports": (("http", 9000 + index), ("admin", 9100 + index)),
        "healthy": True,
    }
    base.update(kw)
    return Allocation(**base)  # type: ignore[arg-type]


def test_named_ports_become_endpoints_with_readiness() -> None:
    allocs = [
        alloc("a0", 0),
        alloc("a1", 1, healthy=None),  # not checked yet: not ready
        alloc("a2", 2, desired="stop"),  # being stopped: gone from the registry already
        alloc("a3", 3, status="starting"),
    ]
    entries = registry({"shop": APP}, allocs, {"n1": "10.0.0.1"})
    assert [e.ref for e in entries] == ["shop/web", "shop/api"]
    api = entries[1]
    http, admin = api.ports
    assert (http.name, http.protocol, http.cluster) == ("http", "http", "shop.api.http")
    assert admin.protocol == "tcp"
    assert [(e.id, e.address, e.port, e.ready) for e in http.endpoints] == [
        ("a0-http", "10.0.0.1", 9000, True),
        ("a1-http", "10.0.0.1", 9001, False),
    ]
    assert http.ready == 1
    assert dict(http.endpoints[0].metadata)["index"] == "0"
    assert http.endpoints[0].instance == "shop.api[0]"
    assert entries[0].ports == ()  # a service without ports has no endpoints


def test_find_service_by_name_app_slash_name_or_dotted() -> None:
    entries = registry({"shop": APP}, [], {})
    assert [e.ref for e in find_service(entries, "api")] == ["shop/api"]
    assert [e.ref for e in find_service(entries, "shop/api")] == ["shop/api"]
    assert [e.ref for e in find_service(entries, "api.shop")] == ["shop/api"]
    assert find_service(entries, "other/api") == []


def test_sdk_upstream_reads_the_callers_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELASTIN_UPSTREAM_ORDER_API_URL", "http://127.0.0.1:4000")
    monkeypatch.setenv("ELASTIN_UPSTREAM_ORDER_API", "127.0.0.1:4000")
    assert upstream("order-api") == "http://127.0.0.1:4000"
    assert upstream("order-api", url=False) == "127.0.0.1:4000"
    with pytest.raises(EngineError, match="upstreams"):
        upstream("billing")
